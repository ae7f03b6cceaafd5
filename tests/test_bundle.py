"""write_bundle swaps tree and zip in together: a failure between the renames leaves the
previous bundle, tree and zip, as it was."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from edgepack.bundle import inspect_bundle, write_bundle

MANIFEST = {"schema": "edgepack.bundle/1"}


def bundle(out: Path, version: str) -> tuple[Path, Path]:
    return write_bundle(out, "m-t", {"model.bin": f"weights {version}".encode(), "labels.txt": f"{version}\n"},
                        MANIFEST)


def fail_rename_to(monkeypatch, dest: Path) -> None:
    """The first rename (os.replace or os.rename, which Path.rename calls) onto dest raises."""
    failed = []

    def wrap(real):
        def rename(src, dst, *a, **kw):
            if Path(dst) == dest and not failed:
                failed.append(dst)
                raise OSError(f"injected failure renaming onto {dest.name}")
            return real(src, dst, *a, **kw)
        return rename

    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(os, "rename", wrap(os.rename))


def state(out: Path) -> tuple[str, str]:
    with zipfile.ZipFile(out / "m-t.zip") as z:
        in_zip = z.read("m-t/labels.txt").decode()
    return (out / "m-t" / "labels.txt").read_text(), in_zip


@pytest.mark.parametrize("fail_on", ["m-t", "m-t.zip"])     # the tree's rename, the zip's (after the tree's)
def test_a_failed_swap_keeps_the_previous_tree_and_zip(tmp_path, monkeypatch, fail_on):
    out = tmp_path / "out"
    bundle(out, "v1")
    fail_rename_to(monkeypatch, out / fail_on)
    with pytest.raises(OSError, match="injected failure"):
        bundle(out, "v2")
    monkeypatch.undo()
    assert state(out) == ("v1\n", "v1\n")
    for path in (out / "m-t", out / "m-t.zip"):
        _, checks = inspect_bundle(path)
        assert checks and all(ok for _, ok in checks)
    assert sorted(p.name for p in out.iterdir()) == ["m-t", "m-t.zip"]     # no staging left behind
    bundle(out, "v3")
    assert state(out) == ("v3\n", "v3\n")


def test_a_failed_first_swap_leaves_no_half_bundle(tmp_path, monkeypatch):
    out = tmp_path / "out"
    fail_rename_to(monkeypatch, out / "m-t.zip")
    with pytest.raises(OSError, match="injected failure"):
        bundle(out, "v1")
    assert list(out.iterdir()) == []
