"""Bad input: exit 2, one line naming the file, key or value at fault, --out untouched."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")} if folder.is_dir() else {}


def _case(tmp: Path, tiny: dict[str, Path], name: str) -> tuple[list[str], str]:
    """Build the arguments for one bad-input case; return (args, text the error must contain)."""
    model = f"{tiny['model']}:make_model"
    base = ["--model", model, "--weights", str(tiny["weights"]), "--data", str(tiny["data"]),
            "--set", "quantize.calibration_samples=16"]
    x, y = np.load(tiny["data"])["x"], np.load(tiny["data"])["y"]
    if name == "unknown target":
        return ["-t", "no-such-target", *base], "unknown target 'no-such-target'"
    if name == "unknown profile key":
        return ["-t", "tflite-int8", *base, "--set", "quantize.bogus=1"], "unknown key quantize.bogus"
    if name == "removed key validate.reference":      # [reference] enabled is the switch
        return ["-t", "tflite-int8", *base, "--set", "validate.reference=false"], "unknown key validate.reference"
    if name == "latency budget for a device not validated":
        return ["-t", "tflite-int8", *base, "--set", "distill.enabled=false", "--set", "prune.enabled=false",
                "--set", "lowrank.enabled=false", "--set", "validate.max_p50_ms={ board = 2.0 }"], \
            "validate.max_p50_ms names board, not among validate.devices (host)"
    if name == "negative latency budget":
        return ["-t", "tflite-int8", *base, "--set", "validate.max_p50_ms=-1.0"], "validate.max_p50_ms"
    if name == "unknown key in project file":
        cfg = tmp / "edgepack.toml"
        cfg.write_text("[validate]\nrunz = 3\n")
        return ["-t", "tflite-int8", *base, "--config", str(cfg)], f"{cfg}: unknown key validate.runz"
    if name == "mistyped profile key":
        return ["-t", "tflite-int8", *base, "--set", "validate.runs=many"], "validate.runs"
    if name == "out-of-range value":
        return ["-t", "tflite-int8", *base, "--set", "validate.max_accuracy_drop_pp=-1"], "validate.max_accuracy_drop_pp"
    if name == "missing model file":
        return ["-t", "tflite-int8", *base, "--model", str(tmp / "nope.py") + ":make_model"], "nope.py: model file not found"
    if name == "factory not found":
        return ["-t", "tflite-int8", *base, "--model", f"{tiny['model']}:make_nothing"], "no factory 'make_nothing'"
    if name == "weights do not match":
        return ["-t", "tflite-int8", *base, "--model", f"{tiny['model']}:make_other"], "weights do not match"
    if name == "forward fails on the data's shape":
        p = tmp / "rgb.npz"
        np.savez(p, x=np.zeros((40, 3, 8, 8), np.float32), y=np.arange(40) % 4)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "forward fails on input of shape (8, 3, 8, 8)"
    if name == "missing data file":
        return ["-t", "tflite-int8", *base, "--data", str(tmp / "missing.npz")], "missing.npz: data file not found"
    if name == "corrupt data file":
        p = tmp / "corrupt.npz"
        p.write_bytes(b"this is not a zip archive at all")
        return ["-t", "tflite-int8", *base, "--data", str(p)], "corrupt.npz: not a readable .npz"
    if name == "truncated data file":
        p = tmp / "truncated.npz"
        p.write_bytes(tiny["data"].read_bytes()[: tiny["data"].stat().st_size // 2])
        return ["-t", "tflite-int8", *base, "--data", str(p)], "truncated.npz: not a readable .npz"
    if name == "x/y length mismatch":
        p = tmp / "mismatch.npz"
        np.savez(p, x=x, y=y[:-3])
        return ["-t", "tflite-int8", *base, "--data", str(p)], f"x has {len(x)} samples but y has {len(y) - 3}"
    if name == "NaN in the data":
        p = tmp / "nan.npz"
        bad = x.copy()
        bad[5, 0, 1, 1] = np.nan
        np.savez(p, x=bad, y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "nan.npz: x holds NaN or Inf (first at sample 5)"
    if name == "Inf in the data":
        p = tmp / "inf.npz"
        bad = x.copy()
        bad[7, 0, 0, 0] = np.inf
        np.savez(p, x=bad, y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "x holds NaN or Inf (first at sample 7)"
    if name == "too few calibration samples":
        # Fewer than asked for is fine down to a floor (all are used); below it, exit 2.
        return ["-t", "tflite-int8", *base, "--set", "data.eval_fraction=0.95"], \
            "8 calibration samples; quantization needs at least 16"
    if name == "non-numeric label":
        p = tmp / "strlabels.npz"
        np.savez(p, x=x, y=np.array(["cat"] * len(y)))
        return ["-t", "tflite-int8", *base, "--data", str(p)], "strlabels.npz: y has dtype <U3"
    if name == "output folder is a file":
        f = tmp / "out-file"
        f.write_text("keep me")
        return ["-t", "tflite-int8", *base, "--out", str(f)], "exists and is not a folder"
    raise AssertionError(name)


CASES = ["unknown target", "unknown profile key", "removed key validate.reference",
         "latency budget for a device not validated", "negative latency budget", "unknown key in project file", "mistyped profile key",
         "out-of-range value", "missing model file", "factory not found", "weights do not match",
         "forward fails on the data's shape", "missing data file", "corrupt data file", "truncated data file",
         "x/y length mismatch", "NaN in the data", "Inf in the data", "too few calibration samples",
         "non-numeric label", "output folder is a file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_naming_the_fault_and_touches_nothing(case, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous-bundle.zip").write_bytes(b"an earlier good bundle")
    before = _snapshot(out)
    args, expected = _case(tmp_path, tiny, case)
    if "--out" not in args:
        args += ["--out", str(out)]
    result = CliRunner().invoke(main, ["build", *args])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: "), result.output
    assert expected in lines[0], lines[0]
    assert _snapshot(out) == before
    if case == "output folder is a file":
        assert (tmp_path / "out-file").read_text() == "keep me"


def test_inspect_names_a_changed_file(tmp_path):
    from edgepack.bundle import write_bundle

    tree, zip_path = write_bundle(tmp_path, "b", {"model.bin": b"weights", "labels.txt": "a\nb\n"},
                                  {"schema": "edgepack.bundle/1"})
    (tree / "labels.txt").write_text("a\nc\n")
    result = CliRunner().invoke(main, ["inspect", str(tree)])
    assert result.exit_code == 2
    assert "labels.txt changed" in result.output
    assert CliRunner().invoke(main, ["inspect", str(zip_path)]).exit_code == 0


def test_inspect_on_a_non_bundle(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"nope")
    result = CliRunner().invoke(main, ["inspect", str(p)])
    assert result.exit_code == 2 and "x.zip: not a bundle" in result.output
