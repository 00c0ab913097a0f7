"""Execute notebooks/incident.ipynb on the bundled sample and check what it printed; check
that the committed notebook carries the outputs a fresh run gives.

After changing the notebook, commit it with its outputs:
``.venv/bin/python tests/test_notebook.py --write`` (runs it on samples/incident, in place).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "incident.ipynb"
SAMPLE = REPO / "samples" / "incident"

pytestmark = pytest.mark.notebook


def _stream_text(nb) -> str:  # type: ignore[no-untyped-def]
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def execute(out_dir: Path) -> Any:
    """The notebook run on the sample in a fresh kernel (this checkout's analyzer), its
    report written to ``out_dir``; no timing metadata, so a rerun changes nothing else."""
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"PYTHONPATH": str(REPO), "DNSTRAIL_NOTEBOOK_OUT": str(out_dir)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         record_timing=False,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


#: Printed lines that must read the same in the committed notebook and a fresh run.
ESSENTIAL = re.compile(r"^(FINDINGS|TUNNEL_DOMAIN|CONNECT_AFTER|REPORT|timeouts:|cart asked) .*$",
                       re.MULTILINE)


def test_incident_notebook_runs_and_finds_the_story(tmp_path: Path) -> None:
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    assert SAMPLE.is_dir(), "samples/incident is missing"
    nb = execute(tmp_path)
    text = _stream_text(nb)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors

    m = re.search(r"^FINDINGS (\d+)$", text, re.MULTILINE)
    assert m and int(m.group(1)) > 0, text[-2000:]
    # the story's tunnel is found at its registered domain
    assert re.search(r"^TUNNEL_DOMAIN cdn-telemetry-sync\.net in batch/report-gen", text, re.MULTILINE)
    # the dead resolver shows up as timeouts of the ledger pod
    t = re.search(r"^timeouts: (\d+)$", text, re.MULTILINE)
    assert t and int(t.group(1)) > 0
    # the Go client asks far more often than the TTL allows
    c = re.search(r"cart asked redis (\d+) times; median gap ([\d.]+) s; answer TTL (\d+) s",
                  text)
    assert c and int(c.group(1)) >= 50 and float(c.group(2)) < int(c.group(3)) / 2
    # checkout connects to what it resolved for api.stripe.com, on port 8080
    after = re.findall(r"^CONNECT_AFTER shop/checkout-\S+ api\.stripe\.com\S* -> "
                       r"[\d.]+:8080 [\d.]+ ms ok$", text, re.MULTILINE)
    assert len(after) == 3, text
    # two figures were drawn
    images = [o for cell in nb.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    assert re.search(r"^REPORT incident-report\.html is over 10 kB$", text, re.MULTILINE)
    html = (tmp_path / "incident-report.html").read_text()
    assert "cdn-telemetry-sync.net" in html


def test_committed_notebook_has_the_outputs_of_a_fresh_run(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    committed = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    empty = [i for i, c in enumerate(code) if not c.get("outputs")]
    assert not empty, f"code cells without outputs: {empty} (tests/test_notebook.py --write)"
    assert all(c.get("execution_count") for c in code)
    text = _stream_text(committed)
    # nothing of the machine it ran on: no absolute paths, temporary directories, user names
    for leak in (str(REPO), tempfile.gettempdir() + "/", "/home/", "/root/", "dnstrail-nb-"):
        assert leak not in text, leak
    assert "image/png" in str(committed)
    fresh = execute(tmp_path)
    assert ESSENTIAL.findall(text) == ESSENTIAL.findall(_stream_text(fresh))
    assert len(ESSENTIAL.findall(text)) >= 6
    assert [len(c.get("outputs", [])) for c in code] == [
        len(c.get("outputs", [])) for c in fresh.cells if c.cell_type == "code"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_notebook.py --write")
    import nbformat

    with tempfile.TemporaryDirectory(prefix="dnstrail-nb-") as out:
        executed = execute(Path(out))
    nbformat.write(executed, NOTEBOOK)
    print(f"wrote {NOTEBOOK.relative_to(REPO)} with its outputs")
