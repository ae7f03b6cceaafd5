"""`edgepack verify`: is this bundle the one that was measured, and does this device agree?

Checks, cheapest first: every file's sha256 against the manifest and, with a public key,
the signature (edgepack/shipping/integrity.py; exit 2 on a mismatch, naming the file or
the key), then, for each --device, one run of the bundle's file on reference.npz's
inputs, whose outputs must match the expected ones (the self-check, edgepack/selfcheck.py;
exit 1 when a device fails it or cannot run the file). No timing, no accuracy: the
command an app team runs on a new phone or board.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from .bench import open_bundle, self_check_on
from .errors import DeviceError, UsageError
from .selfcheck import describe
from .shipping.integrity import check_bundle


def verify_bundle(bundle: Path, devices: list[str], *, public_key: Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """{"bundle", "files": [(name, ok)], "signature", "devices": [{device, self_check, detail, ...}],
    "passed"}. A changed file, or with a public key a missing or foreign signature, raises
    UsageError (exit 2) before any device runs."""
    from .devices import load_device

    for d in devices:
        load_device(d)                       # unknown device: exit 2 before anything runs
    integrity = check_bundle(Path(bundle), public_key)
    for name, ok in integrity.files:
        log(f"  {'ok' if ok else 'CHANGED':<8} {name}")
    log(f"  signature: {integrity.describe_signature()}")
    if not integrity.ok:
        hint = " (sign it: edgepack sign BUNDLE --key PRIVATE.pem)" if integrity.signature == "unsigned" else ""
        raise UsageError(f"{bundle}: " + "; ".join(integrity.problems) + hint)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        b = open_bundle(Path(bundle), Path(tmp) / "bundle")
        files = sorted(b.manifest.get("files", {}))
        signed = " and the signature" if integrity.signature == "valid" else ""
        log(f"{b.label}: {len(files)} files match their sha256{signed}")
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
    return {"bundle": b.label, "path": str(bundle), "files": files, "signature": integrity.to_json(),
            "devices": rows, "passed": all(r["self_check"] == "pass" for r in rows)}
