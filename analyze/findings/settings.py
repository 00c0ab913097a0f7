"""Detector settings: thresholds from a TOML file and ``--set name=value``, extra allowed
domains (``--allow``). docs/findings.md lists every threshold with its default and reason.

A settings file has one table per detector, the names are the fields of that detector's
``Thresholds`` (``analyze.findings.tunneling.Thresholds``, ``...resolvers.Thresholds``)::

    [tunneling]
    min_queries = 12
    answer_bytes_per_min = 4000

    [resolvers]
    silent_span_s = 3

    [known_services]
    allow = ["scan.example-av.com"]

``--set tunneling.min_queries=20`` overrides one value (the section may be left out when
the name is unique: ``--set silent_span_s=3``).
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from analyze.errors import AnalyzeError

#: Detector sections and the module whose ``Thresholds`` they set.
SECTIONS: dict[str, str] = {"tunneling": "tunneling", "resolvers": "resolvers"}

T = TypeVar("T")


class SettingsError(AnalyzeError):
    """bad detector setting: see docs/findings.md for the names, defaults and types"""


@dataclass(frozen=True)
class Settings:
    """Threshold overrides per section and extra known-service domains."""

    values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    allow: tuple[str, ...] = ()

    def for_section(self, section: str) -> dict[str, Any]:
        return dict(self.values.get(section, {}))


def defaults(section: str) -> Any:
    """The default ``Thresholds`` of a section."""
    if section not in SECTIONS:
        raise SettingsError(f"unknown settings section {section!r} (one of "
                            f"{', '.join(sorted(SECTIONS))})")
    return importlib.import_module(f"analyze.findings.{SECTIONS[section]}").Thresholds()


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(section: str, name: str, value: Any, default: Any) -> Any:
    kind = type(default)
    where = f"{section}.{name}"
    want = _KIND_WORDS.get(kind, kind.__name__)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            raise SettingsError(f"{where}: {value!r} is not {want}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SettingsError(f"{where}: {value!r} is not {want}")
    return value


def _check(section: str, name: str, value: Any) -> Any:
    base = defaults(section)
    names = {f.name for f in dataclasses.fields(base)}
    if name not in names:
        raise SettingsError(f"unknown setting {section}.{name} (the {section} settings: "
                            f"{', '.join(sorted(names))})")
    out = _convert(section, name, value, getattr(base, name))
    if isinstance(out, (int, float)) and not isinstance(out, bool) and out < 0:
        raise SettingsError(f"{section}.{name}: {value!r} is negative")
    return out


def _section_of(name: str) -> str:
    owners = [s for s in SECTIONS
              if name in {f.name for f in dataclasses.fields(defaults(s))}]
    if len(owners) != 1:
        raise SettingsError(
            f"setting {name!r} " + (f"is in {' and '.join(owners)}: write SECTION.{name}"
                                    if owners else "is unknown (see docs/findings.md)"))
    return owners[0]


def load_settings(path: str | Path | None = None, sets: Iterable[str] = (),
                  allow: Iterable[str] = ()) -> Settings:
    """Settings from a TOML file (optional), ``NAME=VALUE`` overrides (applied after the
    file) and extra allowed domains. Every name and value is checked: SettingsError."""
    values: dict[str, dict[str, Any]] = {}
    allowed: list[str] = []
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from None
        for section, table in doc.items():
            if section == "known_services":
                extra = table.get("allow", []) if isinstance(table, dict) else None
                if not isinstance(extra, list) or not all(isinstance(d, str) for d in extra):
                    raise SettingsError(f"{path}: [known_services] allow must be a list of "
                                        "domains")
                allowed.extend(extra)
                continue
            if not isinstance(table, dict):
                raise SettingsError(f"{path}: {section!r} must be a [table]")
            for name, value in table.items():
                values.setdefault(section, {})[name] = _check(section, name, value)
    for item in sets:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SettingsError(f"--set {item!r}: write NAME=VALUE (e.g. "
                                "tunneling.min_queries=20)")
        section, dot, field_name = name.rpartition(".")
        if not dot:
            section, field_name = _section_of(name), name
        values.setdefault(section, {})[field_name] = _check(section, field_name, value)
    allowed.extend(allow)
    return Settings(values, tuple(normalize_domain(d) for d in allowed))


def normalize_domain(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    d = d.removeprefix("*.")
    if not d or len(d) > 253 or any(not label or len(label) > 63 for label in d.split(".")):
        raise SettingsError(f"--allow {domain!r}: not a domain name")
    return d


def thresholds_for(section: str, cls: type[T], settings: Settings | None) -> T:
    """``cls()`` with the section's overrides of ``settings``."""
    if settings is None:
        return cls()
    return dataclasses.replace(cls(), **settings.for_section(section))  # type: ignore[type-var]
