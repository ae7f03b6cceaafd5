"""torch.nn.Module -> ONNX, checked against torch; shared by the targets that convert from ONNX.

Also home of `quiet()`, which the converters use to keep their chatter (Python
prints and C++ logs alike) out of the user's terminal while keeping it for the
error message when something fails.

Exporter choice (torch 2.13): the torch.export-based ("dynamo") exporter, torch's
default. Both it and the legacy TorchScript exporter give byte-identical files from
one export to the next, but the legacy one leaves scalars and shapes as Constant
nodes (and Identity nodes) that onnx2tf expects onnx-simplifier to have folded:
without onnxsim, which is not installed here, onnx2tf cannot convert its GroupNorm
(InstanceNormalization fed by Constant nodes), while the dynamo graph (constants
folded into initializers by the exporter's own optimizer) converts. The costs: about
2 s per export instead of 0.1 s, and no opset below 18 — a lower `export.opset` is
raised to 18 and the artifact says so in meta["notes"] (asked for 17, the exporter
itself would try a down-conversion that fails on ordinary CNNs and ship 18 anyway).
Where torch.export cannot capture a model (Python control flow on tensor values) the
export fails; falling back to the legacy tracer would silently bake in one branch.

The same model and sample give a byte-identical file, across exports and processes.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..arrays import Arrays, as_arrays, flatten_outputs, head, to_torch
from ..arrays import output_names as arrays_output_names
from ..artifacts import Artifact
from ..errors import ConversionError

INPUT_NAME = "input"
OUTPUT_NAME = "output"

MIN_OPSET = 18   # the lowest opset the torch 2.13 exporter has implementations for

# How closely onnxruntime must reproduce torch on the sample (float32, same math).
ATOL = 1e-4
RTOL = 1e-3

# Where torch's exceptions name the op they could not translate (the exception only: the
# exporter's log names ops it merely skipped, such as "torchvision::nms").
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w:.]+)'"),   # dynamo: No ONNX function found for <OpOverload(op='aten.x', ...
    re.compile(r"operator '([\w:.]+)'"),          # legacy: Exporting the operator 'aten::x' to ONNX ...
)


@dataclass
class Captured:
    text: str = ""


@contextlib.contextmanager
def quiet() -> Iterator[Captured]:
    """Send stdout and stderr to a temporary file while the block runs.

    Both levels: Python's sys.stdout/sys.stderr (which pytest or a notebook may have
    replaced) and file descriptors 1 and 2, where TensorFlow's and PyTorch's C++ code
    write. What was written is in the yielded object's `.text` afterwards, for error
    messages. Process-wide while it lasts: output of other threads is captured too.
    """
    captured = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as log:
        saved = os.dup(1), os.dup(2)
        stream = open(os.dup(log.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield captured
        finally:
            stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            stream.close()
            log.seek(0)
            captured.text = log.read()[-100_000:].decode(errors="replace")


def _unsupported_op(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        if m := pattern.search(message):
            return m.group(1)
    return None


def export_onnx(model: Any, sample: Arrays, path: Path, opset: int = 17, *,
                output_names: list[str] | None = None, dynamic_batch: bool = False) -> Artifact:
    """Export `model` (eval mode) to `path`: inputs named as `sample`'s keys (one sample of
    each, in forward order, each in its own dtype), outputs as `output_names` (default: as
    arrays.output_names names the forward's result); batch 1, or a dynamic batch dimension.

    The file is written atomically. It is checked with onnx.checker and run with
    onnxruntime on the sample: a result that differs from torch, or an operator the
    exporter cannot translate, raises ConversionError naming the op. An opset below
    MIN_OPSET is raised to it, with a note in meta["notes"].
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = head(as_arrays(sample), 1)
    args = to_torch(sample)
    notes = []
    if opset < MIN_OPSET:
        notes.append(f"export.opset = {opset} raised to {MIN_OPSET}: the torch {torch.__version__.split('+')[0]} "
                     f"ONNX exporter has no implementations below opset {MIN_OPSET}")
        opset = MIN_OPSET
    was_training = model.training
    model.eval()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            raw = model(*args)
            reference = flatten_outputs(raw, type(model).__name__)
            names = list(output_names or arrays_output_names(raw))
            dynamic = batch_dims(args) if dynamic_batch else None
            try:
                with quiet(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # external_data=False: one self-contained file (models under 2 GB).
                    torch.onnx.export(model, args, str(tmp), input_names=list(sample), output_names=names,
                                      opset_version=opset, dynamo=True, external_data=False, optimize=True,
                                      verbose=False, dynamic_shapes=dynamic)
            except Exception as e:
                op = _unsupported_op(str(e))
                what = f"unsupported operator {op}" if op else "export failed"
                raise ConversionError(f"ONNX export (opset {opset}) of {type(model).__name__}: {what}: "
                                      f"{_first_line(e)}") from e
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ConversionError(f"ONNX export of {type(model).__name__}: onnx.checker rejects the model: "
                                  f"{_first_line(e)}") from e
        diff = _check_with_onnxruntime(tmp, sample, dict(zip(names, (r.numpy() for r in reference))))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    first = next(iter(sample.values()))
    meta: dict[str, Any] = {"input_shape": list(first.shape), "input_name": next(iter(sample)),
                            "output_name": names[0], "inputs": io_entries(sample), "output_names": names,
                            "output_shapes": {n: list(r.shape) for n, r in zip(names, reference)},
                            "dynamic_batch": bool(dynamic_batch), "opset": opset,
                            "exporter": f"torch.onnx dynamo (torch {torch.__version__})", "max_abs_diff": diff}
    if notes:
        meta["notes"] = notes
    return Artifact.from_file("onnx", path, **meta)


def io_entries(sample: Arrays) -> list[dict[str, Any]]:
    """[{name, shape (batch 1), dtype}] of the inputs: what export records for convert."""
    return [{"name": k, "shape": [1, *v.shape[1:]], "dtype": str(v.dtype)} for k, v in sample.items()]


def _check_with_onnxruntime(path: Path, sample: Arrays, expected: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1     # one sample: threads would only spin
    feed = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in sample.items()}
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(list(expected), feed)
    except Exception as e:
        raise ConversionError(f"onnxruntime cannot run the exported ONNX model: {_first_line(e)}") from e
    worst = 0.0
    for (name, want), have in zip(expected.items(), got):
        if have.shape != want.shape:
            raise ConversionError(f"exported ONNX model gives output {name} of shape {list(have.shape)}, torch gives "
                                  f"{list(want.shape)}")
        diff = float_diff(have, want, ATOL, RTOL)
        if diff is None:
            raise ConversionError(f"exported ONNX model differs from torch on the sample in output {name}: "
                                  f"max |diff| = {np.max(np.abs(have.astype(float) - want)):.3g}")
        worst = max(worst, diff)
    return worst


def batch_dims(args: tuple[Any, ...]) -> tuple[dict[int, Any], ...]:
    """torch.export dynamic_shapes: dimension 0 of every input is one shared "batch"."""
    import torch

    batch = torch.export.Dim("batch")
    return tuple({0: batch} for _ in args)


def float_diff(have: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> float | None:
    """The largest abs difference of two outputs, or None when it exceeds atol + rtol * the
    largest magnitude (or is not finite). Integer outputs must be equal (difference 0)."""
    if not np.issubdtype(want.dtype, np.floating):
        return 0.0 if np.array_equal(have, want) else None
    diff = float(np.max(np.abs(have - want))) if have.size else 0.0
    if not np.isfinite(diff) or diff > atol + rtol * float(np.max(np.abs(want), initial=0.0)):
        return None
    return diff


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"^<class '[\w.]+'>: (.+)$", re.MULTILINE)   # the dynamo exporter's "Exception summary"


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    if m := _SUMMARY.search(text):
        return m.group(1).strip()
    return text.splitlines()[0] if text else type(e).__name__
