"""The ready-to-ship bundle: model file, manifest.json (edgepack.bundle/1), report,
labels and reference inputs/outputs; zipped and unpacked, swapped in atomically.

The previous bundle in the output folder stays intact until the new one is
complete: tree and zip are both assembled in a staging folder, then swapped in
together (the old tree is moved aside, the new tree and the new zip renamed into
place). If a rename fails between the two, both are put back as they were, so the
tree and the zip beside it always belong to the same build. Signing (model.sig beside
manifest.json, see edgepack/shipping/signing.py) and pulling from a registry republish
a bundle through the same staged swap.

model.sig is the one file manifest.json does not list: it is made after the manifest
and covers it (and every other file), so signing changes no hash the manifest holds.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text, sha256_file, strip_paths
from .errors import UsageError

SCHEMA = "edgepack.bundle/1"
SIGNATURE = "model.sig"             # OpenSSF model-signing's signature of every other file
ZIP_DATE = (1980, 1, 1, 0, 0, 0)    # fixed entry times: the zip changes only when its content does


def bundle_name(model_name: str, target: str) -> str:
    return f"{model_name}-{target}"


def model_filename(artifact: Any) -> str:
    return "model" + artifact.path.suffix


def make_manifest(*, name: str, target: Any, artifact: Any, io: dict[str, list[dict[str, Any]]],
                  data: Any, labels: list[str], settings: Any, teacher: Any, created_at: str,
                  reference_run: dict[str, Any] | None = None) -> dict[str, Any]:
    pre = dict(data.preprocessing)
    inputs = [dict(i, preprocessing=pre) for i in io["inputs"]]
    return {
        "schema": SCHEMA,
        "name": name,
        "target": target.name,
        "format": target.format,
        "model": model_filename(artifact),
        "side_files": [Path(f).name for f in artifact.meta.get("side_files", [])],
        "scheme": artifact.meta.get("scheme"),
        "inputs": inputs,
        "outputs": io["outputs"],
        # Batch size the file takes: 1 unless the route kept a dynamic batch (export.dynamic_batch).
        "batch": "dynamic" if any((i.get("shape") or [1])[0] in (-1, None) for i in inputs) else 1,
        "preprocessing": pre,
        "labels": labels,
        # The tolerance any device's outputs on reference.npz are held to (edgepack/selfcheck.py),
        # and the runtime that made them (it gets the tighter bound).
        "self_check": {**settings["validate"].self_check.model_dump(mode="json"), "reference_run": reference_run},
        "runtime": {"name": target.runtime, "min_version": target.runtime_min_version,
                    **({"config": dict(target.runtime_config)} if target.runtime_config else {}),
                    **({"alternatives": target.runtime_alternatives} if getattr(target, "runtime_alternatives", None) else {})},
        # Inputs by name and content hash, never by where they lay on the build machine.
        "provenance": strip_paths({
            "edgepack_version": __version__, "profile": str(settings.profile_path.name),
            "recipe_hash": settings.recipe_hash, "calibration_data_sha256": data.calibration_sha256,
            "model": teacher.spec, "model_sha256": teacher.sha256, "data": data.source, "data_sha256": data.sha256,
            "created_at": created_at}),
    }


def _zip_tree(tree: Path, dest: Path) -> None:
    with open(dest, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        os.fchmod(raw.fileno(), 0o644)
        for f in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{tree.name}/{f.relative_to(tree).as_posix()}", ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, f.read_bytes())


def _swap_in(staging: Path, new_tree: Path, new_zip: Path, final: Path, zip_path: Path) -> None:
    """Put the new tree and zip in place of the old ones, both or neither.

    The old zip is hard-linked into staging first (it stays in place until the new one
    replaces it in one rename), the old tree is moved into staging; a failure at any
    step moves the new tree out and the old tree and zip back."""
    old_tree, old_zip = staging / ".previous", staging / ".previous.zip"
    if zip_path.exists():
        try:
            os.link(zip_path, old_zip)
        except OSError:                  # a file system without hard links
            shutil.copy2(zip_path, old_zip)
    moved_old = placed_new = False
    try:
        if final.exists():
            os.replace(final, old_tree)
            moved_old = True
        os.replace(new_tree, final)
        placed_new = True
        os.replace(new_zip, zip_path)
    except BaseException:
        if placed_new:
            os.replace(final, new_tree)
        if moved_old:
            os.replace(old_tree, final)
        if old_zip.exists():
            os.replace(old_zip, zip_path)
        else:
            zip_path.unlink(missing_ok=True)
        raise


def _publish(out_dir: Path, name: str, fill: Callable[[Path], None]) -> tuple[Path, Path]:
    """Let `fill` populate a staged tree, zip it, swap tree and zip in for <out>/<name>/ and
    <out>/<name>.zip (both or neither). Returns (tree, zip)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        tree = staging / name
        tree.mkdir()
        fill(tree)
        new_zip = staging / f"{name}.zip"
        _zip_tree(tree, new_zip)
        final, zip_path = out_dir / name, out_dir / f"{name}.zip"
        _swap_in(staging, tree, new_zip, final, zip_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, zip_path


def write_bundle(out_dir: Path, name: str, files: dict[str, Path | str | bytes], manifest: dict[str, Any],
                 sign: Callable[[Path], None] | None = None) -> tuple[Path, Path]:
    """Assemble <out>/<name>/ and <out>/<name>.zip from `files` (bundle path -> source file
    or content) plus manifest.json with the sha256 of every file; `sign(tree)`, when given,
    adds the signature after the manifest and before the zip. Returns (tree, zip)."""
    def fill(tree: Path) -> None:
        for rel, src in files.items():
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dst.write_bytes(src)
            elif isinstance(src, str):
                dst.write_text(src)
            else:
                shutil.copyfile(src, dst)
        full = dict(manifest, files={p.relative_to(tree).as_posix(): sha256_file(p)
                                     for p in sorted(tree.rglob("*")) if p.is_file()})
        atomic_write_json(tree / "manifest.json", full)
        if sign is not None:
            sign(tree)

    return _publish(out_dir, name, fill)


def republish(source: Path, out_dir: Path, name: str, sign: Callable[[Path], None] | None = None) -> tuple[Path, Path]:
    """A bundle tree (checked beforehand) copied in as <out>/<name>/ and <out>/<name>.zip,
    signed on the way when `sign` is given; the previous pair is swapped out atomically."""
    def fill(tree: Path) -> None:
        shutil.copytree(source, tree, dirs_exist_ok=True)
        if sign is not None:
            sign(tree)

    return _publish(out_dir, name, fill)


def is_safe_relpath(rel: str) -> bool:
    """A relative POSIX path that stays inside the folder it is joined to: no absolute path,
    no `..`, no empty or `.` part, no backslash or NUL (a zip entry or registry layer name)."""
    if not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/")) and not PurePosixPath(rel).is_absolute()


def split_bundle_path(path: Path) -> tuple[Path, str]:
    """(folder, name) of a bundle given as its tree or its zip: both live side by side."""
    path = Path(path)
    return path.parent, (path.name if path.is_dir() else path.stem)


@contextmanager
def bundle_tree(path: Path) -> Iterator[Path]:
    """The bundle as a folder: the tree itself, or its zip unpacked into a temporary folder
    named like the tree (an entry that would land outside it is refused, exit 2)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: bundle not found")
    if path.is_dir():
        yield path
        return
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{path}: not a bundle (zip unreadable: {e})") from None
    with z, tempfile.TemporaryDirectory(prefix="edgepack-bundle-") as tmp:
        names = [i for i in z.infolist() if not i.is_dir()]
        prefix = next((n.filename.split("/")[0] + "/" for n in names
                       if n.filename.endswith("/manifest.json") and n.filename.count("/") == 1), "")
        top = prefix.rstrip("/") or path.stem
        if not is_safe_relpath(top):
            raise UsageError(f"{path}: its folder {top!r} is not a plain name")
        root = Path(tmp) / top
        root.mkdir()
        for info in names:
            rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
            if not is_safe_relpath(rel):
                raise UsageError(f"{path}: entry {info.filename!r} would land outside the bundle folder {root.name}/")
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(info))
        yield root


def inspect_bundle(path: Path) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """Read a bundle (zip or folder) and check every sha256 in its manifest.

    Returns (manifest, [(file, ok)]); a missing manifest or unreadable bundle raises UsageError.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: bundle not found")
    if path.is_dir():
        root = path
        read = lambda rel: (root / rel).read_bytes() if (root / rel).is_file() else None  # noqa: E731
        listing = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    else:
        try:
            z = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UsageError(f"{path}: not a bundle (zip unreadable: {e})") from None
        prefix = next((n.split("/")[0] + "/" for n in z.namelist() if n.endswith("manifest.json")), "")
        names = set(z.namelist())
        read = lambda rel: z.read(prefix + rel) if prefix + rel in names else None  # noqa: E731
        listing = {n[len(prefix):] for n in names if n.startswith(prefix) and not n.endswith("/")}
    raw = read("manifest.json")
    if raw is None:
        raise UsageError(f"{path}: no manifest.json in the bundle")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: manifest.json is not valid JSON ({e})") from None
    if manifest.get("schema") != SCHEMA:
        raise UsageError(f"{path}: manifest.json schema is {manifest.get('schema')!r}, expected {SCHEMA!r}")
    import hashlib

    checks = []
    for rel, digest in manifest.get("files", {}).items():
        data = read(rel)
        checks.append((rel, data is not None and hashlib.sha256(data).hexdigest() == digest))
    for extra in sorted(listing - set(manifest.get("files", {})) - {"manifest.json", SIGNATURE}):
        checks.append((extra, False))      # a file the manifest does not list (model.sig comes after it)
    return manifest, checks


def intact_manifest(path: Path, *, named: Path | None = None, refusing: str = "") -> dict[str, Any]:
    """The manifest of a bundle whose every file matches its sha256, else UsageError (exit 2)
    naming the changed files; `named`: the path to name (default `path`), `refusing`: what is
    not done with it ("not signing it")."""
    manifest, checks = inspect_bundle(path)
    bad = [f for f, ok in checks if not ok]
    if bad:
        raise UsageError(f"{named or path}: {', '.join(bad)} changed since the bundle was made (sha256 mismatch)"
                         + (f": {refusing}" if refusing else ""))
    return manifest


__all__ = ["SIGNATURE", "atomic_write_text", "bundle_name", "bundle_tree", "inspect_bundle", "intact_manifest",
           "is_safe_relpath",
           "make_manifest", "republish", "split_bundle_path", "write_bundle"]
