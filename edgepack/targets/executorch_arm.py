"""executorch-arm: torch.export (.pt2) -> PT2E with the XNNPACK quantizer ->
to_edge_transform_and_lower(XnnpackPartitioner) -> .to_executorch() -> model.pte.

export() writes a torch.export program (batch-1 example, static shapes) with
`torch.export.save`, checked against the module on the sample. convert() loads it and:
  - int8: XNNPACKQuantizer with `get_symmetric_quantization_config(is_per_channel=...)`:
    symmetric int8 weights (per channel), int8 activations calibrated by running every
    calibration sample through the prepared graph (HistogramObserver);
  - dynamic: the same quantizer with `is_dynamic=True`: int8 weights, activations
    quantized per inference (linear and conv layers); one sample feeds the weight observers;
  - none: the float program (the FP32 reference).
Then the XNNPACK partitioner takes what XNNPACK can run; the rest runs on ExecuTorch's
portable kernels. meta["delegation"] counts both, per operator, and meta["notes"] names
the operators left to portable kernels.

Traps this module handles (executorch 1.5.1, torchao 0.18, torch 2.13):
  - an operator outside the Core ATen opset fails in to_edge (SpecViolationError):
    ConversionError naming it;
  - an operator in Core ATen but without a kernel in the runtime lowers and serializes
    fine, and only fails when the .pte is loaded ("Missing operator: aten::sort.values",
    printed by the C++ runtime; Python sees "error: 0x:14"): every .pte is loaded and
    run once with executorch.runtime here, and a missing kernel is a ConversionError
    naming the operator (the device's runtime has the same kernels: same wheel);
  - the runtime and torchao print to stdout/stderr from C++ (cpuinfo probes, missing
    CUDA kernels of torchao): kept out of the terminal by quiet().
"""
from __future__ import annotations

import io
import logging
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Artifact, atomic_write_bytes
from ..errors import ConversionError
from ._onnx import INPUT_NAME, OUTPUT_NAME, quiet
from .base import Target

# torchao (imported by executorch.exir) warns that its CUDA kernels (mxfp8, cutlass) do not
# load (true of every CPU install, of no use to an XNNPACK build) and, through torch's pytree
# logger, about its own enum registration: neither is the user's business.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

_LAYOUTS = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
# ScalarType codes of executorch's TensorInfo.dtype()
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool", 15: "bfloat16"}
# How closely the float .pte must reproduce torch on the sample.
ATOL = 1e-4
RTOL = 1e-3
_IGNORED_NODES = ("getitem", "executorch_call_delegate")


class ExecuTorchArm(Target):
    name = "executorch-arm"
    format = "pte"
    runtime = "executorch"
    runtime_min_version = "1.5"     # a .pte loads in the runtime version that wrote it, or newer
    requires = ("executorch", "torchao")
    export_format = "pt2"
    quantizer = "PT2E with the XNNPACK quantizer (torchao.quantization.pt2e)"

    # -- export -------------------------------------------------------------------
    def export(self, model: Any, sample: np.ndarray, out_dir: Path, opset: int = 17) -> Artifact:
        """torch.nn.Module -> torch.export program (model.pt2), batch 1. `opset` is ONNX's: unused."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(sample[:1], dtype=np.float32))
        was_training = model.training
        try:
            model.eval()
        except NotImplementedError:     # a torch.export program's .module() (a .pt2 input): already inference
            was_training = False
        try:
            with torch.no_grad():
                expected = model(x)
                if not isinstance(expected, torch.Tensor):
                    raise ConversionError(f"target {self.name!r}: {type(model).__name__}.forward returns "
                                          f"{type(expected).__name__}; export needs a model that returns one "
                                          "tensor (the logits)")
                with quiet(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        program = torch.export.export(model, (x,))
                        got = program.module()(x)
                    except Exception as e:
                        raise ConversionError(f"target {self.name!r}: torch.export of {type(model).__name__} "
                                              f"failed{_op_clause(str(e))}: {_first_line(e)}") from e
        finally:
            if was_training:
                model.train()
        diff = float((got - expected).abs().max()) if expected.numel() else 0.0
        if not np.isfinite(diff) or diff > ATOL + RTOL * float(expected.abs().max()):
            raise ConversionError(f"target {self.name!r}: the exported program differs from torch on the sample: "
                                  f"max |diff| = {diff:.3g}")
        buf = io.BytesIO()
        torch.export.save(program, buf)
        dest = Path(out_dir) / "model.pt2"
        atomic_write_bytes(dest, buf.getvalue())
        return Artifact.from_file("pt2", dest, input_shape=list(x.shape), input_name=INPUT_NAME,
                                  output_name=OUTPUT_NAME, exporter=f"torch.export (torch {torch.__version__})",
                                  max_abs_diff=diff)

    # -- convert ------------------------------------------------------------------
    def convert(self, exported: Artifact, quantize: Any, calibration: np.ndarray, out_dir: Path,
                *, progress: Any = None, validation: Any = None) -> Artifact:
        calib = self.convert_inputs(exported, quantize, calibration)
        import torch

        scheme = quantize.scheme
        notes: list[str] = []
        if quantize.io != "float32" and scheme != "none":
            notes.append(f"quantize.io = {quantize.io!r}: the .pte keeps float32 input and output "
                         "(XNNPACK quantizes inside the delegate)")
        advance = progress(f"{self.name}: convert ({scheme})", 3) if progress else (lambda n=1: None)

        with quiet() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(exported.path))
            shape = [1, *[int(s) for s in exported.meta.get("input_shape", calib.shape)[1:]]]
            sample = torch.from_numpy(calib[:1] if len(calib) else np.zeros(shape, np.float32))
            if scheme != "none":
                try:
                    program = _quantize(program, scheme, quantize.per_channel, calib, sample)
                except Exception as e:
                    raise ConversionError(f"target {self.name!r}: PT2E quantization ({scheme}) failed"
                                          f"{_op_clause(str(e))}: {_first_line(e)}") from e
            advance(1)
            failure = None
            try:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
                delegation = _delegation(edge.exported_program().graph_module)
                data = edge.to_executorch().buffer
            except Exception as e:
                failure = e
        if failure is not None:     # after the block: log.text is filled when quiet() ends
            raise ConversionError(_lowering_failure(failure, log.text)) from failure
        advance(1)
        diff = self._check_runs(data, sample, program if scheme == "none" else None)
        dest = Path(out_dir) / "model.pte"
        atomic_write_bytes(dest, data)
        advance(1)

        meta: dict[str, Any] = {"layout": _LAYOUTS.get(len(shape), "NC"), "scheme": scheme, "io": "float32",
                                "input_shape": shape, "delegation": delegation}
        if scheme != "none":
            meta["per_channel"] = bool(quantize.per_channel)
        if scheme == "int8":
            meta["calibration_samples"] = int(len(calib))
        if diff is not None:
            meta["max_abs_diff"] = diff
        notes.append(_delegation_note(delegation))
        if scheme != "none":
            notes.append(_quantized_note(delegation, scheme))
        meta["notes"] = notes
        return Artifact.from_file("pte", dest, **meta)

    def _check_runs(self, data: bytes, sample: Any, reference: Any) -> float | None:
        """Load the program with executorch.runtime and run the sample: a kernel the runtime lacks
        fails here, at build time, not on the device. Float programs must match torch."""
        from executorch.runtime import Runtime

        failure = None
        with quiet() as log:       # log.text is filled when the block ends
            try:
                method = Runtime.get().load_program(data).load_method("forward")
                (out, *_) = method.execute([sample])
            except Exception as e:
                failure = e
        if failure is not None:
            missing = sorted(set(re.findall(r"Missing operator: \[\d+\] ([\w:.]+)", log.text)))
            if missing:
                raise ConversionError(f"target {self.name!r}: the ExecuTorch runtime has no kernel for "
                                      f"operator {', '.join(missing)} (not delegated to XNNPACK, and no "
                                      "portable kernel)") from None
            raise ConversionError(f"target {self.name!r}: the .pte does not run in executorch.runtime: "
                                  f"{_first_line(failure)}") from None
        if not bool(out.isfinite().all()):
            raise ConversionError(f"target {self.name!r}: the .pte gives non-finite outputs on a sample")
        if reference is None:
            return None
        import torch

        with torch.no_grad():
            expected = reference.module()(sample)
        diff = float((out - expected).abs().max()) if expected.numel() else 0.0
        if out.shape != expected.shape or diff > ATOL + RTOL * float(expected.abs().max()):
            raise ConversionError(f"target {self.name!r}: the float .pte differs from torch on the sample: "
                                  f"shape {list(out.shape)} vs {list(expected.shape)}, max |diff| = {diff:.3g}")
        return diff

    # -- inspect ------------------------------------------------------------------
    def io_details(self, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        from executorch.runtime import Runtime

        with quiet():
            meta = Runtime.get().load_program(str(artifact.path)).metadata("forward")
        layout = artifact.meta.get("layout", "NCHW")

        def entry(info: Any, index: int, name: str, layout: str | None) -> dict[str, Any]:
            shape = [int(s) for s in info.sizes()]
            return {"name": name, "index": index, "shape": shape,
                    "dtype": _SCALAR_TYPES.get(int(info.dtype()), str(info.dtype())),
                    "layout": layout, "scale": None, "zero_point": 0}

        inputs = [entry(meta.input_tensor_meta(i), i, INPUT_NAME if i == 0 else f"input_{i}", layout)
                  for i in range(meta.num_inputs())]
        outputs = []
        for i in range(meta.num_outputs()):
            info = meta.output_tensor_meta(i)
            outputs.append(entry(info, i, OUTPUT_NAME if i == 0 else f"output_{i}",
                                 _LAYOUTS.get(len(info.sizes())) if i == 0 else None))
        return {"inputs": inputs, "outputs": outputs}


# -- PT2E -------------------------------------------------------------------------

def _quantize(program: Any, scheme: str, per_channel: bool, calib: np.ndarray, sample: Any) -> Any:
    import torch

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=scheme == "dynamic")
    prepared = prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(config))
    # Static: calibrate activations on every sample. Dynamic: activations need no statistics;
    # one pass feeds the weight observers.
    feed = calib if scheme == "int8" else calib[:1]
    # One intra-op thread: the observers run many tiny ops, and on a busy machine each parallel
    # region waits for a descheduled worker (seen: 120 ms per sample with 2 threads, 1 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            if len(feed) == 0:
                prepared(sample)
            for i in range(len(feed)):
                prepared(torch.from_numpy(feed[i:i + 1]))
    finally:
        torch.set_num_threads(threads)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (sample,))


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten::").replace("::", ".")


def _delegation(graph_module: Any) -> dict[str, Any]:
    """Operators inside XNNPACK delegates vs. left to portable kernels (from the lowered graph)."""
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    layers = int8_layers = subgraphs = 0

    def count(node: Any, into: Counter[str]) -> None:
        nonlocal layers, int8_layers
        if node.op != "call_function" or node.name.startswith(_IGNORED_NODES):
            return
        op = _op_name(node.target)
        into[op] += 1
        if op.split(".")[1:2] in (["convolution"], ["linear"]):
            layers += 1
            weight = node.args[1] if len(node.args) > 1 else None
            int8_layers += "dequantize" in _op_name(getattr(weight, "target", ""))

    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            subgraphs += 1
            for inner in getattr(graph_module, node.target).original_module.graph.nodes:
                count(inner, delegated)
        else:
            count(node, portable)
    return {"backend": "XnnpackBackend", "subgraphs": subgraphs,
            "delegated_ops": sum(delegated.values()), "portable_ops": sum(portable.values()),
            "layers": layers, "int8_weight_layers": int8_layers,
            "delegated": dict(sorted(delegated.items())), "portable": dict(sorted(portable.items()))}


def _delegation_note(d: dict[str, Any]) -> str:
    text = (f"XNNPACK runs {d['delegated_ops']} of {d['delegated_ops'] + d['portable_ops']} operators "
            f"({d['subgraphs']} delegated subgraph{'s' if d['subgraphs'] != 1 else ''})")
    if d["portable"]:
        text += "; on portable kernels: " + ", ".join(f"{op} ×{n}" for op, n in d["portable"].items())
    return text


def _quantized_note(d: dict[str, Any], scheme: str) -> str:
    text = f"int8 weights in {d['int8_weight_layers']} of {d['layers']} convolution/linear layers"
    if scheme == "dynamic" and d["int8_weight_layers"] < d["layers"]:
        # xnnpack_quantizer_utils._do_annotate_conv (executorch 1.5): conv+relu has no dynamic pattern.
        text += (" (XNNPACK's dynamic quantization takes linear layers and 2-D convolutions that are "
                 "neither depthwise nor followed by a ReLU; the others stay float)")
    return text


# -- errors -------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_IN_MESSAGE = (
    re.compile(r"Operator torch\._ops\.([\w.]+) is not in Core ATen opset"),
    re.compile(r"OpOverload\(op='([\w:.]+)'"),
    re.compile(r"\b(aten\.[\w]+(?:\.[\w]+)?)\b"),
)


def _op_clause(message: str) -> str:
    for pattern in _OP_IN_MESSAGE:
        if m := pattern.search(message):
            return f" on operator {m.group(1)}"
    return ""


def _lowering_failure(e: BaseException, log: str) -> str:
    text = f"{e}\n{log}"
    if m := _OP_IN_MESSAGE[0].search(text):
        return (f"target 'executorch-arm': operator {m.group(1)} is not in the Core ATen opset that ExecuTorch "
                f"runs (to_edge rejects it; no XNNPACK or portable kernel)")
    return f"target 'executorch-arm': to_edge_transform_and_lower / to_executorch failed{_op_clause(text)}: " \
           f"{_first_line(e)}"


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:500]
