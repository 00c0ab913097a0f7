"""BPF C sources of dnstrail, shipped as package data and loaded by absolute path."""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent


def source_path(name: str) -> Path:
    """Absolute path of a BPF C source shipped with dnstrail (e.g. ``dnstrail.bpf.c``)."""
    return SOURCE_DIR / name
