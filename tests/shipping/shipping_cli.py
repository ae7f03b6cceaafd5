"""The CLI run in-process for the shipping tests, and a folder's contents for before/after checks."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgepack.cli import main


def edgepack(*args: object, env: dict[str, str | None] | None = None):
    """The real CLI, in-process (each command's heavy imports happen once per session)."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} \
        if folder.is_dir() else {}
