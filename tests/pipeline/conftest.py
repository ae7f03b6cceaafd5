"""Builds shared by this folder's test files, each made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_build import FAST, edgepack      # its sibling: pytest puts this folder on sys.path


@pytest.fixture(scope="session")
def tiny_all(tiny, tmp_path_factory) -> tuple[Path, object]:
    """`edgepack build -t all` of the tiny model: (out folder, the finished process), one
    bundle per target, each with its reference.npz."""
    out = tmp_path_factory.mktemp("all") / "out"
    res = edgepack("build", "-t", "all", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
                   "--data", str(tiny["data"]), "--out", str(out), *FAST, check=False)
    return out, res
