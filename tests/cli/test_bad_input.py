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
    # -- the data convention: x / x.<name> inputs, y / y.<name> targets, labels
    if name == "x.<name> not a forward argument":
        p = tmp / "named.npz"
        np.savez(p, **{"x.x": x, "x.mask": np.ones((len(x), 8), np.bool_)}, y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], \
            "named.npz: input(s) x.mask are not arguments of"
    if name == "both x and x.<name>":
        p = tmp / "both.npz"
        np.savez(p, x=x, **{"x.a": x}, y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "both.npz: holds both x and x.<name> arrays (x.a)"
    if name == "scikit-learn style x_train / x_test":
        p = tmp / "sklearn.npz"
        np.savez(p, x_train=x, y_train=y, x_test=x, y_test=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "sklearn.npz: missing array(s) x"
    if name == "inputs of different lengths":
        p = tmp / "ragged.npz"
        np.savez(p, **{"x.x": x, "x.mask": np.ones((len(x) - 10, 8), np.bool_)}, y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], \
            f"ragged.npz: x.mask has {len(x) - 10} samples but x.x has {len(x)}"
    if name == "empty input array":
        p = tmp / "empty.npz"
        np.savez(p, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
        return ["-t", "tflite-int8", *base, "--data", str(p)], "empty.npz: x holds no samples"
    if name == "samples that hold no values":
        p = tmp / "hollow.npz"
        np.savez(p, x=np.zeros((len(x), 1, 0, 8), np.float32), y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "hollow.npz: x has shape (160, 1, 0, 8)"
    if name == "targets that hold no values":
        p = tmp / "hollow_y.npz"
        np.savez(p, x=x, y=np.zeros((len(x), 0), np.int8))
        return ["-t", "tflite-int8", *base, "--data", str(p)], "hollow_y.npz: y has shape (160, 0)"
    if name == "string input":
        p = tmp / "text.npz"
        np.savez(p, x=np.array([["a short sentence"]] * len(y)), y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "text.npz: x has dtype <U16; expected numbers"
    if name == "object input":
        p = tmp / "objects.npz"
        objs = np.empty(len(y), dtype=object)
        objs[:] = [{"pixels": i} for i in range(len(y))]
        np.savez(p, x=objs, y=y)            # pickled on save; never unpickled on load
        return ["-t", "tflite-int8", *base, "--data", str(p)], "objects.npz: x holds Python objects (dtype object)"
    if name == "complex input":
        p = tmp / "complex.npz"
        np.savez(p, x=x.astype(np.complex64), y=y)
        return ["-t", "tflite-int8", *base, "--data", str(p)], "complex.npz: x has dtype complex64"
    if name == "y.<name> length mismatch":
        p = tmp / "named-y.npz"
        np.savez(p, x=x, **{"y.a": y, "y.b": y[:-5]})
        return ["-t", "tflite-int8", *base, "--data", str(p)], f"named-y.npz: x has {len(x)} samples but y.b has {len(y) - 5}"
    if name == "both y and y.<name>":
        p = tmp / "both-y.npz"
        np.savez(p, x=x, y=y, **{"y.boxes": np.zeros((len(y), 4), np.float32)})
        return ["-t", "tflite-int8", *base, "--data", str(p)], "both-y.npz: holds both y and y.<name> arrays (y.boxes)"
    if name == "class id far beyond any class count":
        p = tmp / "huge-ids.npz"
        np.savez(p, x=x, y=np.full(len(y), 2 ** 62, np.int64))
        return ["-t", "tflite-int8", *base, "--data", str(p)], f"huge-ids.npz: y holds class id {2 ** 62}"
    if name == "labels not a list of names":
        p = tmp / "labels-2d.npz"
        np.savez(p, x=x, y=y, labels=np.array([["a", "b"], ["c", "d"]]))
        return ["-t", "tflite-int8", *base, "--data", str(p)], "labels-2d.npz: labels has dtype <U1 and shape (2, 2)"
    if name == "labels.txt not UTF-8":
        d = tmp / "given"
        d.mkdir()
        np.savez(d / "calibration.npz", x=x[:80], y=y[:80])
        np.savez(d / "evaluation.npz", x=x[80:], y=y[80:])
        (d / "labels.txt").write_bytes(b"\xff\xfecat\n")
        return ["-t", "tflite-int8", *base, "--data", str(d)], "labels.txt: not readable as UTF-8 text"
    if name == "calibration and evaluation files share samples":
        d = tmp / "given"
        d.mkdir()
        np.savez(d / "calibration.npz", x=x[:100], y=y[:100])
        np.savez(d / "evaluation.npz", x=x[70:], y=y[70:])
        return ["-t", "tflite-int8", *base, "--data", str(d)], \
            "given/calibration.npz and given/evaluation.npz: 30 of the calibration samples are also evaluation samples"
    if name == "training data shares samples with the evaluation data":
        p = tmp / "train.npz"
        np.savez(p, x=x, y=y)                 # the whole file: every evaluation sample is in it
        n_eval = int(round(len(x) * 0.5))
        return ["-t", "tflite-int8", *base, "--train-data", str(p)], \
            f"train.npz and data.npz: {n_eval} of the training samples are also evaluation samples"
    if name == "too few evaluation samples":
        p = tmp / "small.npz"
        np.savez(p, x=x[:30], y=y[:30])
        return ["-t", "tflite-int8", *base, "--data", str(p)], \
            "small.npz: 15 evaluation samples; the accuracy gate needs at least 20"
    # -- tasks and metrics
    if name == "metric file not found":
        return ["-t", "tflite-int8", *base, "--metric", "nope.py:fn"], "task.metric: nope.py: metric file not found"
    if name == "metric function not in the file":
        m = tmp / "metrics.py"
        m.write_text("def accuracy(outputs, targets):\n    return {'acc': 1.0}\n")
        return ["-t", "tflite-int8", *base, "--metric", f"{m}:fn"], "metrics.py: no metric 'fn' in it (callables there: accuracy)"
    if name == "metric file fails to import":
        m = tmp / "broken_metric.py"
        m.write_text("import numpy as np\nraise RuntimeError('first line\\nsecond line')\n")
        return ["-t", "tflite-int8", *base, "--metric", f"{m}:fn"], \
            "broken_metric.py: importing the metric file failed: RuntimeError: first line"
    if name == "regression with class-id targets":
        return ["-t", "tflite-int8", *base, "--set", "task.kind=regression"], \
            "data.npz: y of per-sample shape () does not fit the model's first output (4,)"
    if name == "unknown task kind":
        return ["-t", "tflite-int8", *base, "--set", "task.kind=nonsense"], "--set: task.kind: Input should be"
    # -- the model and the project file
    if name == "forward returns a non-tensor":
        m = tmp / "chatty.py"
        m.write_text("import torch\nfrom torch import nn\n\n"
                     "class Chatty(nn.Module):\n"
                     "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(64, 4)\n\n"
                     "    def forward(self, x):\n        return {'logits': self.fc(x.flatten(1)), 'note': 'ok'}\n\n"
                     "def make_model():\n    return Chatty()\n")
        return ["-t", "tflite-int8", "--model", f"{m}:make_model", "--data", str(tiny["data"])], \
            "chatty.py:make_model: forward returns Tensor, str; expected a tensor"
    if name == "project file is a folder":
        d = tmp / "edgepack.toml"
        d.mkdir()
        return ["-t", "tflite-int8", *base, "--config", str(d)], f"{d}: not a file"
    if name == "project file names another target":
        cfg = tmp / "edgepack.toml"
        cfg.write_text('name = "onnx-int8"\n')
        return ["-t", "tflite-int8", *base, "--config", str(cfg)], \
            f"{cfg}: name = 'onnx-int8' but the build is for target 'tflite-int8'"
    # -- quantization
    if name == "int4-weights on a target whose runtime does not run it":
        return ["-t", "executorch-arm", *base, "--set", "quantize.scheme=int4-weights"], \
            "quantize.scheme = 'int4-weights' is not supported by target 'executorch-arm'"
    if name == "unknown recovery step":
        return ["-t", "tflite-int8", *base, "--set", 'quantize.recovery=["ptq", "magic"]'], \
            "--set: quantize.recovery.1: Input should be 'ptq', 'advanced', 'mixed' or 'qat'"
    if name == "recovery step named twice":
        return ["-t", "tflite-int8", *base, "--set", 'quantize.recovery=["ptq", "mixed", "mixed"]'], \
            "--set: quantize.recovery: Value error, names a step twice"
    if name == "project key with a newline":
        cfg = tmp / "edgepack.toml"
        cfg.write_text('[validate]\n"runs\\nwarmup" = 3\n')
        return ["-t", "tflite-int8", *base, "--config", str(cfg)], f"{cfg}: unknown key validate.'runs\\nwarmup'"
    # -- signing on the way out (--sign-key / bundle.sign_key)
    if name == "signing key not found":
        return ["-t", "tflite-int8", *base, "--sign-key", str(tmp / "nope.pem")], \
            f"bundle.sign_key {tmp / 'nope.pem'}: key file not found"
    if name == "signing key is a public key":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        k = tmp / "public.pem"
        k.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        cfg = tmp / "edgepack.toml"
        cfg.write_text(f'[bundle]\nsign_key = "{k}"\n')
        return ["-t", "tflite-int8", *base, "--config", str(cfg)], f"bundle.sign_key {k}: not a PEM private key"
    raise AssertionError(name)


CASES = ["unknown target", "unknown profile key", "removed key validate.reference",
         "latency budget for a device not validated", "negative latency budget", "unknown key in project file", "mistyped profile key",
         "out-of-range value", "missing model file", "factory not found", "weights do not match",
         "forward fails on the data's shape", "missing data file", "corrupt data file", "truncated data file",
         "x/y length mismatch", "NaN in the data", "Inf in the data", "too few calibration samples",
         "non-numeric label", "output folder is a file",
         "x.<name> not a forward argument", "both x and x.<name>", "scikit-learn style x_train / x_test",
         "inputs of different lengths", "empty input array", "samples that hold no values",
         "targets that hold no values", "string input",
         "object input", "complex input", "y.<name> length mismatch", "both y and y.<name>",
         "class id far beyond any class count", "labels not a list of names", "labels.txt not UTF-8",
         "calibration and evaluation files share samples", "training data shares samples with the evaluation data",
         "too few evaluation samples", "metric file not found", "metric function not in the file",
         "metric file fails to import", "regression with class-id targets", "unknown task kind",
         "forward returns a non-tensor", "project file is a folder", "project file names another target",
         "project key with a newline", "signing key not found", "signing key is a public key",
         "int4-weights on a target whose runtime does not run it", "unknown recovery step",
         "recovery step named twice"]


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


def test_allow_overlap_accepts_training_data_shared_with_the_evaluation_data(tiny, tmp_path):
    """The overlap case above, with --allow-overlap: prepared (dry run), exit 0."""
    train = tmp_path / "train.npz"
    train.write_bytes(tiny["data"].read_bytes())
    args = ["build", "-t", "tflite-int8", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
            "--data", str(tiny["data"]), "--train-data", str(train), "--set", "quantize.calibration_samples=16",
            "--out", str(tmp_path / "out"), "--dry-run"]
    assert CliRunner().invoke(main, args).exit_code == 2
    result = CliRunner().invoke(main, [*args, "--allow-overlap"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out").exists()


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
