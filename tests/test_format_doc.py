"""docs/format.md must document every column of the schema module and every manifest key."""

import re
from pathlib import Path

import pyarrow as pa
import pytest

from capture import schema

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


def _documented_columns(kind: str) -> set[str]:
    text = DOC.read_text()
    section = re.search(rf"^### `{kind}`\n(.*?)(?=^#)", text + "\n#", re.DOTALL | re.MULTILINE)
    assert section, f"docs/format.md has no section for {kind}"
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", section.group(1), re.MULTILINE))


@pytest.mark.parametrize("kind", list(schema.SCHEMAS))
def test_every_column_is_documented(kind: str) -> None:
    documented = _documented_columns(kind)
    columns = set(schema.SCHEMAS[kind].names)
    assert columns - documented == set(), f"undocumented {kind} columns"
    assert documented - columns == set(), f"docs/format.md names {kind} columns that do not exist"


def test_every_manifest_key_is_documented() -> None:
    text = DOC.read_text().split("## manifest.json", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, re.MULTILINE))
    assert documented == set(schema.MANIFEST_KEYS)


def test_every_field_carries_a_doc_string() -> None:
    for kind, sch in schema.SCHEMAS.items():
        for field in sch:
            assert field.metadata and field.metadata.get(b"doc"), f"{kind}.{field.name}"


def test_conform_fills_missing_nullable_and_drops_unknown() -> None:
    old = pa.table({"cgroup_id": pa.array([7], pa.uint64()), "path": ["/a"], "extra": [1]})
    out = schema.conform(old, "cgroups")
    assert out.schema == schema.CGROUPS_SCHEMA
    assert out.column("resolved_at").null_count == 1
    with pytest.raises(schema.FormatError):
        schema.conform(pa.table({"path": ["/a"]}), "cgroups")


def test_newer_major_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / schema.MANIFEST_NAME).write_text(
        f'{{"format": "dnstrail-capture", "schema_version": {schema.SCHEMA_VERSION + 1}}}'
    )
    with pytest.raises(schema.FormatError, match="newer"):
        schema.read_manifest(tmp_path)
    (tmp_path / schema.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(schema.FormatError, match="unreadable"):
        schema.read_manifest(tmp_path)


def test_file_kind_ignores_temporary_files() -> None:
    assert schema.file_kind("messages-000001.parquet") == "messages"
    assert schema.file_kind("pods.parquet") == "pods"
    assert schema.file_kind(".tmp-messages-000002.parquet") is None
    assert schema.file_kind("notes.txt") is None


def test_importer_manifest_keys_are_the_documented_ones() -> None:
    """`dnstrail import` writes exactly the manifest keys the recorder writes and the doc names."""
    from analyze.pcap import _base_manifest

    assert set(_base_manifest(["dnstrail", "import"], [53])) == set(schema.MANIFEST_KEYS)
