"""The self-check: a device's outputs on the bundle's reference inputs against the expected ones.

Every bundle carries reference.npz: its first inputs and the outputs the build's host run
of the same file gave on them. Any device that runs the file on those inputs must give
those outputs back, within a tolerance set by each output's dtype:

- int8/uint8 outputs (the runner dequantizes them): `int8_steps` quantization steps (the
  output's scale; one by default), so a kernel that rounds one requantization the other
  way passes, and a changed weight does not;
- other integer outputs (ids, argmax): exactly;
- float outputs: max |got - expected| <= atol + rtol * max |expected|, per output. The
  bound scales with the output because a float kernel on another ISA sums in another
  order, and OpenVINO on ARM runs f16 where the host ran f32 or bf16.

Those bounds hold for the runtime that made the expected outputs (same name, version and
CPU architecture); any other runtime gets the profile's `across` bounds, since ARM and
x86 kernels, or two versions, round an int8 body differently.

A failing self-check fails its device even when its accuracy happens to pass: the file
that ran is not the one that was measured, or the runtime computes something else.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

QUANTIZED = ("int8", "uint8")


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rtol: float = Field(1e-3, ge=0, description="float outputs: share of the output's largest |expected|")
    atol: float = Field(1e-6, ge=0, description="float outputs: absolute slack")
    int8_steps: float = Field(1.0, ge=0, description="int8/uint8 outputs: quantization steps")


class AcrossTolerance(Tolerance):
    """The bounds for any runtime but the one that made the expected outputs."""
    rtol: float = Field(0.02, ge=0)
    atol: float = Field(1e-5, ge=0)
    int8_steps: float = Field(2.0, ge=0)


class SelfCheckTolerance(Tolerance):
    """`[validate.self_check]`: how far a device's outputs may stray from reference.npz's.
    The top level holds for the runtime that made them (same name, version and CPU
    architecture: it should give them back nearly exactly); `across` for any other, whose
    kernels round differently (an int8 body with float outputs differs by more than steps)."""
    across: AcrossTolerance = AcrossTolerance()


def run_identity(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What makes two runs the same runtime: its name, version and the CPU architecture."""
    if not result:
        return None
    rt = result.get("runtime") or {}
    return {"runtime": rt.get("name"), "version": rt.get("version"), "arch": result.get("arch")}


def tolerance_for(tol: SelfCheckTolerance, reference_run: dict[str, Any] | None,
                  result: dict[str, Any] | None) -> tuple[Tolerance, str]:
    """The tolerance for one device run: (tolerance, "same runtime" | "across runtimes")."""
    if reference_run and run_identity(result) == reference_run:
        return tol, "same runtime"
    return tol.across, "across runtimes"


def _allowed(spec: dict[str, Any], expected: np.ndarray, tol: Tolerance) -> tuple[float, str]:
    dtype = str(spec.get("dtype") or "float32")
    scale = float(spec.get("scale") or 0.0)
    if dtype in QUANTIZED and scale > 0:
        # (+1% of a step: the runner's float32 dequantization rounds each value a little)
        return (tol.int8_steps + 0.01) * scale, f"{tol.int8_steps:g} step(s) of {scale:.3g}"
    if np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_:
        return 0.0, "exact"
    peak = float(np.abs(expected).max()) if expected.size else 0.0
    return tol.atol + tol.rtol * peak, f"atol {tol.atol:g} + rtol {tol.rtol:g} x {peak:.3g}"


def compare(outputs: Iterable[np.ndarray], expected: Iterable[np.ndarray], specs: list[dict[str, Any]],
            tol: Tolerance | None = None) -> dict[str, Any]:
    """{"self_check": "pass" | "fail", "worst": {...}, "outputs": [...]} for outputs in the
    model's own layout, one (N, ...) array per output; the first len(expected) samples count."""
    tol = tol or Tolerance()
    outputs, expected = list(outputs), list(expected)
    rows: list[dict[str, Any]] = []
    if len(outputs) != len(expected):
        return {"self_check": "fail", "why": f"{len(outputs)} output(s) where reference.npz holds {len(expected)}",
                "worst": None, "outputs": []}
    for i, (got, exp) in enumerate(zip(outputs, expected)):
        spec = specs[i] if i < len(specs) else {}
        name = spec.get("name") or f"output_{i}"
        exp = np.asarray(exp)
        got = np.asarray(got)[: len(exp)]
        if got.shape != exp.shape:
            rows.append({"output": name, "passed": False, "ratio": float("inf"),
                         "why": f"shape {list(got.shape)} where reference.npz holds {list(exp.shape)}"})
            continue
        allowed, rule = _allowed(spec, exp, tol)
        err = np.abs(got.astype(np.float64) - exp.astype(np.float64))
        err[~np.isfinite(err)] = np.inf
        worst = float(err.max()) if err.size else 0.0
        at = np.unravel_index(int(err.argmax()), err.shape) if err.size else ()
        row = {"output": name, "max_abs_error": worst, "allowed": allowed, "rule": rule,
               "sample": int(at[0]) if at else None, "index": [int(j) for j in at[1:]],
               "mismatched": int((err > allowed).sum()), "elements": int(err.size),
               "passed": bool(worst <= allowed)}
        if spec.get("dtype") in QUANTIZED and spec.get("scale"):
            row["steps"] = worst / float(spec["scale"])
        row["ratio"] = worst / allowed if allowed > 0 else (0.0 if worst == 0 else float("inf"))
        rows.append(row)
    worst_row = max(rows, key=lambda r: r["ratio"]) if rows else None
    passed = all(r["passed"] for r in rows)
    return {"self_check": "pass" if passed else "fail", "worst": worst_row, "outputs": rows}


def describe(check: dict[str, Any]) -> str:
    """One line: 'pass (worst output_0: 0.0021 <= 0.0039, 1 step(s) of 0.0039)'."""
    w = check.get("worst")
    if w is None:
        return f"{check['self_check']}" + (f": {check['why']}" if check.get("why") else "")
    if "max_abs_error" not in w:
        return f"{check['self_check']} ({w['output']}: {w['why']})"
    where = f" at sample {w['sample']}" + (f" {w['index']}" if w["index"] else "") \
        if w["sample"] is not None and w["max_abs_error"] > 0 else ""
    op = "<=" if w["passed"] else ">"
    return (f"{check['self_check']} (worst {w['output']}: max abs error {w['max_abs_error']:.4g} {op} "
            f"{w['allowed']:.4g}, {w['rule']}; {w['mismatched']}/{w['elements']} values off{where})")


def cell(entry: dict[str, Any]) -> str:
    """A report's table cell for one device entry (build or bench)."""
    if entry.get("self_check") == "reference":
        return "reference (its outputs are reference.npz's)"
    detail = entry.get("self_check_detail")
    if not detail:
        return "–"
    text = describe(detail)
    return text if detail["self_check"] == "pass" else "**FAIL** " + text.removeprefix("fail ")


def tolerance_of(manifest: dict[str, Any], result: dict[str, Any] | None) -> tuple[Tolerance, str]:
    """The tolerance a bundle was built with (its manifest, else the default) for one run."""
    given = dict(manifest.get("self_check") or {})
    reference_run = given.pop("reference_run", None)
    return tolerance_for(SelfCheckTolerance(**given), reference_run, result)
