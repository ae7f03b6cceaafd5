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
from ..arrays import Arrays, as_arrays, flatten_outputs, head, n_samples, take, to_torch
from ..arrays import output_names as arrays_output_names
from ._onnx import INPUT_NAME, OUTPUT_NAME, batch_dims, io_entries, quiet
from ._pt2e import keep_float, xnnpack_quantizer
from .base import QuantPlan, Target

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
    recovery_steps = ("ptq", "advanced", "mixed", "qat")

    # xnnpack: the XNNPACK delegate takes what it can. portable: no delegate, every op on
    # ExecuTorch's portable kernels: slower, but it runs a graph the XNNPACK partitioner's
    # passes cannot lower (seen: a permute before a flatten in ChannelsLastTaggedReshapePass).
    route_names = ("xnnpack", "portable")

    # -- export -------------------------------------------------------------------
    def export(self, model: Any, sample: Arrays | np.ndarray, out_dir: Path, opset: int = 17, *,
               output_names: list[str] | None = None, dynamic_batch: bool = False) -> Artifact:
        """torch.nn.Module -> torch.export program (model.pt2), batch 1 (a dynamic batch
        dimension with dynamic_batch). `opset` is ONNX's: unused."""
        import torch

        sample = head(as_arrays(sample), 1)
        args = to_torch(sample)
        was_training = model.training
        try:
            model.eval()
        except NotImplementedError:     # a torch.export program's .module() (a .pt2 input): already inference
            was_training = False
        try:
            with torch.no_grad():
                raw = model(*args)
                expected = flatten_outputs(raw, type(model).__name__)
                names = list(output_names or arrays_output_names(raw))
                dynamic = batch_dims(args) if dynamic_batch else None
                with quiet(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        program = torch.export.export(model, args, dynamic_shapes=dynamic)
                        got = flatten_outputs(program.module()(*args))
                    except Exception as e:
                        raise ConversionError(f"target {self.name!r}: torch.export of {type(model).__name__} "
                                              f"failed{_op_clause(str(e))}: {_first_line(e)}") from e
        finally:
            if was_training:
                model.train()
        diff = _max_diff(got, expected)
        if diff is None:
            raise ConversionError(f"target {self.name!r}: the exported program differs from torch on the sample")
        buf = io.BytesIO()
        torch.export.save(program, buf)
        dest = Path(out_dir) / "model.pt2"
        atomic_write_bytes(dest, buf.getvalue())
        first = next(iter(sample.values()))
        return Artifact.from_file("pt2", dest, input_shape=list(first.shape), input_name=next(iter(sample)),
                                  output_name=names[0], inputs=io_entries(sample), output_names=names,
                                  dynamic_batch=bool(dynamic_batch),
                                  exporter=f"torch.export (torch {torch.__version__})", max_abs_diff=diff)

    # -- convert ------------------------------------------------------------------
    def convert(self, exported: Artifact, quantize: Any, calibration: Arrays | np.ndarray, out_dir: Path,
                *, progress: Any = None, validation: Any = None, task: Any = None, route: str | None = None,
                module: Artifact | None = None, plan: QuantPlan | None = None) -> Artifact:
        calib = self.convert_inputs(exported, quantize, calibration)
        import torch

        plan = plan or QuantPlan()
        scheme = quantize.scheme
        notes: list[str] = []
        if quantize.io != "float32" and scheme != "none":
            notes.append(f"quantize.io = {quantize.io!r}: the .pte keeps float32 input and output "
                         "(XNNPACK quantizes inside the delegate)")
        advance = progress(f"{self.name}: convert ({scheme})", 3) if progress else (lambda n=1: None)

        with quiet() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(exported.path))
            sample = _sample(exported, calib)
            if scheme != "none":
                try:
                    program = _quantize(program, scheme, quantize.per_channel, calib, sample, plan)
                except Exception as e:
                    raise ConversionError(f"target {self.name!r}: PT2E quantization ({scheme}) failed"
                                          f"{_op_clause(str(e))}: {_first_line(e)}") from e
            advance(1)
            failure = None
            route = route or "xnnpack"
            try:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                partitioners = [XnnpackPartitioner()] if route == "xnnpack" else []
                edge = to_edge_transform_and_lower(program, partitioner=partitioners)
                delegation = _delegation(edge.exported_program().graph_module)
                data = edge.to_executorch().buffer
            except Exception as e:
                failure = e
        if failure is not None:     # after the block: log.text is filled when quiet() ends
            raise ConversionError(_lowering_failure(failure, log.text, route)) from failure
        advance(1)
        diff = self._check_runs(data, sample, program if scheme == "none" else None)
        dest = Path(out_dir) / "model.pte"
        atomic_write_bytes(dest, data)
        advance(1)

        layouts = {k: _LAYOUTS.get(v.ndim, "NC") for k, v in zip(calib or _names(exported), sample)}
        meta: dict[str, Any] = {"layout": next(iter(layouts.values())), "layouts": layouts, "scheme": scheme,
                                "io": "float32", "input_shape": list(sample[0].shape), "delegation": delegation,
                                "output_names": list(exported.meta.get("output_names") or []), "route": route}
        if scheme != "none":
            meta["per_channel"] = bool(quantize.per_channel)
        if scheme == "int8":
            meta["calibration_samples"] = n_samples(calib)
        if plan.advanced and scheme == "int8":
            meta["advanced"] = dict(ADVANCED)
            notes.append("advanced PTQ: NNCF quantize_pt2e with the XNNPACK quantizer (SmoothQuant on linear "
                         "layers, full bias correction)")
        if plan.float_layers:
            meta["float_layers"] = [lay.path for lay in plan.float_layers]
        if diff is not None:
            meta["max_abs_diff"] = diff
        if route == "portable":
            notes.append("route portable: no XNNPACK delegate; every operator runs on ExecuTorch's portable "
                         "kernels (slower)")
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
                outs = list(method.execute(list(sample)))
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
        if not all(bool(o.isfinite().all()) for o in outs if o.is_floating_point()):
            raise ConversionError(f"target {self.name!r}: the .pte gives non-finite outputs on a sample")
        if reference is None:
            return None
        import torch

        with torch.no_grad():
            expected = flatten_outputs(reference.module()(*sample))
        diff = _max_diff(outs, expected)
        if diff is None:
            raise ConversionError(f"target {self.name!r}: the float .pte differs from torch on the sample: "
                                  f"shapes {[list(o.shape) for o in outs]} vs {[list(e.shape) for e in expected]}")
        return diff

    # -- inspect ------------------------------------------------------------------
    def io_details(self, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        from executorch.runtime import Runtime

        with quiet():
            meta = Runtime.get().load_program(str(artifact.path)).metadata("forward")
        layouts = artifact.meta.get("layouts") or {}
        in_names = list(layouts) or [INPUT_NAME]
        out_names = list(artifact.meta.get("output_names") or [OUTPUT_NAME])

        def entry(info: Any, index: int, name: str, layout: str | None) -> dict[str, Any]:
            shape = [int(s) for s in info.sizes()]
            return {"name": name, "index": index, "shape": shape,
                    "dtype": _SCALAR_TYPES.get(int(info.dtype()), str(info.dtype())),
                    "layout": layout, "scale": None, "zero_point": 0}

        def name(names: list[str], i: int, kind: str) -> str:
            return names[i] if i < len(names) else f"{kind}_{i}"

        inputs = []
        for i in range(meta.num_inputs()):
            info = meta.input_tensor_meta(i)
            n = name(in_names, i, "input")
            inputs.append(entry(info, i, n, layouts.get(n, _LAYOUTS.get(len(info.sizes())))))
        outputs = []
        for i in range(meta.num_outputs()):
            info = meta.output_tensor_meta(i)
            outputs.append(entry(info, i, name(out_names, i, "output"), _LAYOUTS.get(len(info.sizes()))))
        return {"inputs": inputs, "outputs": outputs}


# -- PT2E -------------------------------------------------------------------------

# The advanced step (NNCF quantize_pt2e): SmoothQuant on linear layers (its design case, NNCF's
# alpha), none on convolutions (XNNPACK quantizes a conv's output, so a smoothing multiply after
# it smooths nothing: measured on the outlier model, 25 % -> 28 %), full bias correction.
ADVANCED = {"smooth_quant": {"matmul": 0.95, "convolution": -1}, "bias_correction": "full"}


def _quantize(program: Any, scheme: str, per_channel: bool, calib: Arrays, sample: tuple[Any, ...],
              plan: QuantPlan) -> Any:
    import torch

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = keep_float(xnnpack_quantizer(per_channel, dynamic=scheme == "dynamic"), plan.float_layers,
                           plan.layers)
    # One intra-op thread: the observers run many tiny ops, and on a busy machine each parallel
    # region waits for a descheduled worker (seen: 120 ms per sample with 2 threads, 1 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if plan.advanced and scheme == "int8":
            converted = _nncf_quantize(program.module(), quantizer, calib)
        else:
            prepared = prepare_pt2e(program.module(), quantizer)
            # Static: calibrate activations on every sample. Dynamic: activations need no statistics;
            # one pass feeds the weight observers.
            feed = calib if scheme == "int8" else head(calib, 1)
            with torch.no_grad():
                if n_samples(feed) == 0:
                    prepared(*sample)
                for i in range(n_samples(feed)):
                    prepared(*to_torch(take(feed, slice(i, i + 1))))
            converted = convert_pt2e(prepared)
    finally:
        torch.set_num_threads(threads)
    return torch.export.export(converted, sample)


def _nncf_quantize(graph: Any, quantizer: Any, calib: Arrays) -> Any:
    """NNCF's post-training pipeline on the PT2E graph, with the XNNPACK quantizer's annotation."""
    import nncf
    from nncf.experimental.torch.fx import quantize_pt2e
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    items = [to_torch(take(calib, slice(i, i + 1))) for i in range(n_samples(calib))]
    sq = ADVANCED["smooth_quant"]
    return quantize_pt2e(graph, quantizer, nncf.Dataset(items, lambda item: item), subset_size=len(items),
                         fast_bias_correction=False, smooth_quant=True,
                         smooth_quant_params=AdvancedSmoothQuantParameters(convolution=sq["convolution"],
                                                                          matmul=sq["matmul"]))


def _sample(exported: Artifact, calib: Arrays) -> tuple[Any, ...]:
    """One calibration sample as the program's positional inputs (zeros of the recorded
    shapes and dtypes when there is no calibration data: the float reference)."""
    import torch

    if n_samples(calib):
        return to_torch(head(calib, 1))
    entries = exported.meta.get("inputs") or [{"shape": exported.meta.get("input_shape"), "dtype": "float32"}]
    return tuple(torch.from_numpy(np.zeros(e["shape"], e["dtype"])) for e in entries)


def _names(exported: Artifact) -> list[str]:
    return [e["name"] for e in exported.meta.get("inputs") or [{"name": INPUT_NAME}]]


def _max_diff(got: list[Any], expected: list[Any]) -> float | None:
    """The largest abs difference over float outputs; None when shapes, count or integer
    outputs differ, or a float output is off by more than ATOL + RTOL * its range."""
    if len(got) != len(expected):
        return None
    worst = 0.0
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            return None
        if not e.is_floating_point():
            if not bool((g == e).all()):
                return None
            continue
        diff = float((g.float() - e.float()).abs().max()) if e.numel() else 0.0
        if not np.isfinite(diff) or diff > ATOL + RTOL * float(e.abs().max() if e.numel() else 0):
            return None
        worst = max(worst, diff)
    return worst


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


def _lowering_failure(e: BaseException, log: str, route: str = "xnnpack") -> str:
    text = f"{e}\n{log}"
    if m := _OP_IN_MESSAGE[0].search(text):
        return (f"target 'executorch-arm': operator {m.group(1)} is not in the Core ATen opset that ExecuTorch "
                f"runs (to_edge rejects it; no XNNPACK or portable kernel)")
    where = _failing_pass(e)
    return (f"target 'executorch-arm' route {route}: to_edge_transform_and_lower / to_executorch failed"
            f"{_op_clause(text)}{' in ' + where if where else ''}: {_first_line(e)}")


def _failing_pass(e: BaseException) -> str | None:
    """The compiler pass whose frame raised (ChannelsLastTaggedReshapePass, say), if any."""
    tb = e.__traceback__
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and type(owner).__name__.endswith("Pass"):
            found = type(owner).__name__
        tb = tb.tb_next
    return found


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:500]
