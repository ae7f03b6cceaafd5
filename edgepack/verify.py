"""`edgepack verify`: is this bundle the one that was measured, and does this device agree?

Two checks, cheapest first: every file's sha256 against the manifest (exit 2 on a
mismatch, naming the file), then, for each --device, one run of the bundle's file on
reference.npz's inputs, whose outputs must match the expected ones (the self-check,
edgepack/selfcheck.py; exit 1 when a device fails it or cannot run the file). No timing,
no accuracy: the command an app team runs on a new phone or board.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from .bench import open_bundle, self_check_on
from .errors import DeviceError
from .selfcheck import describe


def verify_bundle(bundle: Path, devices: list[str], *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """{"bundle", "files": [(name, ok)], "devices": [{device, self_check, detail, ...}], "passed"}.
    A changed file raises UsageError (exit 2) before any device runs."""
    from .devices import load_device

    for d in devices:
        load_device(d)                       # unknown device: exit 2 before anything runs
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        b = open_bundle(Path(bundle), Path(tmp) / "bundle")
        files = sorted(b.manifest.get("files", {}))
        log(f"{b.label}: {len(files)} files match their sha256")
        for i, dev in enumerate(devices):
            row: dict[str, Any] = {"device": dev}
            try:
                check, result = self_check_on(b, dev, None, Path(tmp) / f"run-{i}")
            except DeviceError as e:
                row.update(self_check="fail", error=str(e).splitlines()[0], error_detail=str(e))
                log(f"  {dev}: cannot run: {row['error']}")
                rows.append(row)
                continue
            row.update(self_check=check["self_check"], detail=check)
            if result:
                row.update({k: result.get(k) for k in ("arch", "emulated", "runtime", "cpu")})
            log(f"  {dev}: self-check {describe(check)}")
            rows.append(row)
    return {"bundle": b.label, "path": str(bundle), "files": files, "devices": rows,
            "passed": all(r["self_check"] == "pass" for r in rows)}
