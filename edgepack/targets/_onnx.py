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


def export_onnx(model: Any, sample: np.ndarray, path: Path, opset: int = 17) -> Artifact:
    """Export `model` (eval mode, batch 1, input "input", output "output") to `path`.

    The file is written atomically. It is checked with onnx.checker and run with
    onnxruntime on `sample[:1]`: a result that differs from torch, or an operator the
    exporter cannot translate, raises ConversionError naming the op. An opset below
    MIN_OPSET is raised to it, with a note in meta["notes"].
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.ascontiguousarray(sample[:1], dtype=np.float32))
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
            reference = model(x)
            if not isinstance(reference, torch.Tensor):
                raise ConversionError(f"{type(model).__name__}.forward returns {type(reference).__name__}; "
                                      "export needs a model that returns one tensor (the logits)")
            try:
                with quiet(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # external_data=False: one self-contained file (models under 2 GB).
                    torch.onnx.export(model, (x,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      opset_version=opset, dynamo=True, external_data=False, optimize=True,
                                      verbose=False)
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
        diff = _check_with_onnxruntime(tmp, x.numpy(), reference.numpy())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    meta: dict[str, Any] = {"input_shape": list(x.shape), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                            "opset": opset, "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
                            "max_abs_diff": diff}
    if notes:
        meta["notes"] = notes
    return Artifact.from_file("onnx", path, **meta)


def _check_with_onnxruntime(path: Path, x: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1     # one sample: threads would only spin
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    except Exception as e:
        raise ConversionError(f"onnxruntime cannot run the exported ONNX model: {_first_line(e)}") from e
    if got.shape != expected.shape:
        raise ConversionError(f"exported ONNX model gives output shape {list(got.shape)}, torch gives "
                              f"{list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.isfinite(diff) or diff > ATOL + RTOL * float(np.max(np.abs(expected), initial=0.0)):
        raise ConversionError(f"exported ONNX model differs from torch on the sample: max |diff| = {diff:.3g}")
    return diff


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"^<class '[\w.]+'>: (.+)$", re.MULTILINE)   # the dynamo exporter's "Exception summary"


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    if m := _SUMMARY.search(text):
        return m.group(1).strip()
    return text.splitlines()[0] if text else type(e).__name__
