"""tflite-int8, second route: torch.nn.Module -> litert-torch (float .tflite) -> ai-edge-quantizer.

Why this route: onnx2tf rewrites an ONNX graph as a channel-last Keras model, and that is
where transformers fail (self-attention's reshapes and transposes, LayerNorm, exact GELU,
several inputs, int64 token ids). litert-torch lowers torch.export's graph to LiteRT
directly, in torch's own layout (no NHWC rewrite: meta["layout"] is the torch layout, and
the data is fed as torch gives it), and ai-edge-quantizer then quantizes the float file,
calibrated on every calibration sample. With the static recipe the graph is int8 end to end:
CONV_2D, FULLY_CONNECTED, BATCH_MATMUL (attention's Q·K and A·V), SOFTMAX, GELU, and
LayerNorm, which litert-torch 0.10 decomposes into MEAN, SQUARED_DIFFERENCE, RSQRT, MUL,
SUB. Ops the recipe cannot quantize stay float between DEQUANTIZE and QUANTIZE and are
listed in meta["float_ops"].

Schemes: "none" float32 file; "dynamic" ai-edge-quantizer's dynamic recipe (int8
weights, float32 activations quantized on the fly by the kernels); "int8" its static
recipe (int8 weights, per channel unless per_channel=False; int8 activations,
asymmetric, min/max over the calibration set).

I/O: ai-edge-quantizer's static recipe quantizes the graph INPUT and OUTPUT too, so a
full-integer file has int8 float-facing inputs and outputs (io="int8", scale and zero point
in the file). io="float32" leaves INPUT and OUTPUT out of the recipe: the file keeps
float32 I/O with one QUANTIZE after each float input and one DEQUANTIZE before each output.
io="uint8" quantizes INPUT and OUTPUT as unsigned 8-bit (ai-edge-quantizer's
static_wi8_au8 policy): the file has uint8 I/O, and the graph inside is int8 with a
requantizing QUANTIZE at each boundary. Integer inputs (token ids, masks) are never quantized.

Signature: one, "serving_default", whose inputs carry the names of `sample` (in
forward-argument order) and whose outputs carry `output_names` (in the model's return
order). litert-torch names a signature's inputs after the keyword arguments it traced
with and its outputs after the keys of a returned dict (a tuple gives "output_0",
"output_1", ...), so the module is wrapped in one whose forward takes the inputs by name
and returns {output_name: tensor}. The flatbuffer's SignatureDef lists inputs and outputs
sorted by name (as TensorFlow's converter does); the subgraph's own inputs and outputs
keep forward order. Callers should feed and read by signature name.

litert-torch 0.10 / ai-edge-quantizer 0.10 quirks this module works around or reports:
  - 64-bit I/O: litert-torch downcasts int64/float64 tensors, model inputs and outputs
    included, to int32/float32 (enable_x64=False, its default, kept here: int64 ops are
    unsupported on most delegates and tflite-runtime kernels). An int64 `input_ids`
    becomes an int32 input; meta["inputs"] gives every input's dtype in the file and
    meta["notes"] says which were downcast; calibration data is cast to match.
    keep_int64=True keeps int64 I/O instead.
  - the quantizer refuses a model that is already quantized and works from a file or
    bytes (we hand it bytes; no temporary files);
  - calibration runs the float file in LiteRT with all intermediate tensors preserved
    (memory grows with the model, not with the number of samples);
  - both print progress bars and a size report and log warnings (the downcast, the
    interpreter's "preserve all tensors" warning): all kept out of the terminal with
    quiet(), and kept for the error message;
  - attention masks: torch's key_padding_mask becomes SELECT_V2(mask, -inf, 0) added to
    the attention scores. ai-edge-quantizer quantizes the -inf constant with a scale taken
    from its finite part (3.9e-12), so in int8 the mask is all zeros and the model silently
    attends to padding (seen: cosine to torch 0.86 mean, 0.63 worst, on a text encoder). The
    ops fed by a float constant holding +-inf or |x| >= 1e4 (-inf, finfo.min, -1e4 masks),
    up to and including the SOFTMAX, are kept in float32 (NO_QUANTIZE in the recipe;
    0.99 mean, 0.96 worst): listed in meta["float_ops"] and explained in meta["notes"]. The
    attention matmuls stay int8;
  - EMBEDDING_LOOKUP has no static int8 config in the quantizer's policy: an nn.Embedding
    stays a float32 table (with a CAST), and QUANTIZE follows it;
  - a torch op with no LiteRT lowering fails in litert-torch as "Lowering not found:
    aten.<op>": raised as ConversionError naming that op (also an op name in torch.export's
    message). Failures inside torch's own decompositions (torch.linalg.inv: "Number of
    input tokens (1) does not match output tokens (0)") name no op; the message is passed on.

Determinism: the same module, sample and calibration data give a byte-identical .tflite
(checked across conversions in one process and across processes, for "none", "dynamic"
and "int8").
"""
from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import ConversionError
from ._onnx import quiet

SIGNATURE = "serving_default"
SCHEMES = ("none", "dynamic", "int8", "int4-weights")
IOS = ("int8", "uint8", "float32")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LAYOUTS = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}


def convert_litert_torch(module: Any, sample: dict[str, np.ndarray], calibration: dict[str, np.ndarray],
                         scheme: str, per_channel: bool, io: str, output_names: list[str], out_path: Path,
                         progress: Callable[[str, int], Callable[..., None]] | None = None, *,
                         keep_int64: bool = False, plan: Any = None, precision: str = "float",
                         block_size: int = 32) -> dict[str, Any]:
    """Convert `module` to a LiteRT file at `out_path`; return its meta.

    sample: {input name: one batch-1 array in torch layout and the input's own dtype}, in
    forward-argument order. calibration: the same names, N samples each (scheme "int8" uses
    all of them; the others ignore it). scheme: "none" | "dynamic" | "int8". per_channel:
    int8 weights per output channel (else per tensor). io: "int8" | "uint8" | "float32",
    the dtype of float inputs and outputs in a full-integer file (other schemes keep
    float32, and say so in notes). output_names: one name per tensor the module returns
    (a tensor, a tuple/list of tensors, or a dict of tensors in insertion order).

    Returns {"layout", "route", "signature", "scheme", "io", "inputs", "outputs",
    "notes", "float_ops", ...}; "inputs"/"outputs" list each signature tensor's name,
    dtype, shape, and scale/zero point when quantized. Raises ConversionError (one line,
    naming the op where one is to blame) when the model cannot be converted.
    """
    if scheme not in SCHEMES:
        raise ConversionError(f"litert-torch route: unknown quantize scheme {scheme!r} (one of {', '.join(SCHEMES)})")
    if io not in IOS:
        raise ConversionError(f"litert-torch route: unknown quantize io {io!r} (one of {', '.join(IOS)})")
    if not sample:
        raise ConversionError("litert-torch route: no sample input given")
    names = list(sample)
    output_names = list(output_names)
    if len(set(output_names)) != len(output_names) or set(output_names) & set(names):
        raise ConversionError(f"litert-torch route: output names {output_names} must be distinct "
                              f"from each other and from the input names {names}")
    notes: list[str] = []
    if scheme != "int8" and io != "float32":
        notes.append(f"quantize.io = {io!r} applies to full-integer models only; scheme {scheme!r} "
                     f"keeps float32 input and output")
        io = "float32"
    advance = progress(f"tflite-int8 (litert-torch): convert ({scheme})", 2) if progress else (lambda n=1: None)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    float_model, downcast = _to_float_tflite(module, sample, output_names, keep_int64)
    timings["convert_s"] = round(time.perf_counter() - t0, 2)
    notes += [f"input {n!r} is {a} in the file ({b} in torch): feed it as {a}" for n, b, a in downcast]
    advance(1)

    data = float_model
    meta: dict[str, Any] = {}
    if scheme != "none":
        t0 = time.perf_counter()
        data, qmeta = quantize_float_tflite(float_model, scheme, per_channel, io, calibration, names, plan=plan,
                                            precision=precision, block_size=block_size)
        notes += qmeta.pop("notes")
        meta.update(qmeta)
        timings["quantize_s"] = round(time.perf_counter() - t0, 2)
    advance(1)

    inputs, outputs = _signature_tensors(data)
    _check_names(inputs, outputs, names, output_names)
    float_ops = _float_ops(data) if scheme == "int8" else []
    if float_ops and not meta.get("float_layers"):
        notes.append(f"not fully integer: {', '.join(float_ops)} run in float32 (no int8 kernel or recipe)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, bytes(data))

    float_ranks = [len(sample[n].shape) for n in names if np.issubdtype(sample[n].dtype, np.floating)]
    meta.update({
        "layout": _LAYOUTS.get(max(float_ranks), "N" + "?" * (max(float_ranks) - 1)) if float_ranks else "NC",
        "route": "litert-torch",
        "signature": SIGNATURE,
        "scheme": scheme,
        "io": io,
        "inputs": inputs,
        "outputs": outputs,
        "float_ops": float_ops,
        "notes": notes,
        **timings,
    })
    return meta


# -- torch -> float .tflite (litert-torch) ------------------------------------------

def _to_float_tflite(module: Any, sample: dict[str, np.ndarray], output_names: list[str],
                     keep_int64: bool) -> tuple[bytes, list[tuple[str, str, str]]]:
    import torch

    class Named(torch.nn.Module):
        """Inputs by keyword, outputs as a dict: litert-torch names the signature after both."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            result = self.inner(*[inputs[n] for n in sample])
            if isinstance(result, dict):
                result = tuple(result.values())
            elif isinstance(result, torch.Tensor):
                result = (result,)
            return dict(zip(output_names, result))

    kwargs = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in sample.items()}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            try:
                result = module(*kwargs.values())
            except Exception as e:
                detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ConversionError(f"the model fails on the sample input in torch: {type(e).__name__}: {detail}") \
                    from None
        count = len(result) if isinstance(result, (tuple, list, dict)) else 1
        if count != len(output_names):
            raise ConversionError(f"the model returns {count} tensor(s), but {len(output_names)} output name(s) "
                                  f"were given ({', '.join(output_names)})")
        with quiet() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import litert_torch

                model = litert_torch.convert(Named(module).eval(), sample_kwargs=kwargs, enable_x64=keep_int64)
                data = bytes(model.model_content())
            except ConversionError:
                raise
            except Exception as e:
                raise ConversionError(_litert_torch_failure(e, log.text)) from None
    finally:
        module.train(was_training)
    downcast = []
    if not keep_int64:
        for n, a in sample.items():
            if a.dtype in (np.int64, np.float64):
                downcast.append((n, a.dtype.name, "int32" if a.dtype == np.int64 else "float32"))
    return data, downcast


def _litert_torch_failure(e: BaseException, log: str) -> str:
    text = _ANSI.sub("", f"{e}\n{log}")
    first = (_ANSI.sub("", str(e)).strip().splitlines() or [type(e).__name__])[0][:300]
    if m := re.search(r"Lowering not found: ([\w.:]+)", text):
        return f"litert-torch has no LiteRT lowering for the torch op {m.group(1)}"
    if m := re.search(r"OpOverload\(op='([\w:.]+)'", text) or re.search(r"\b(aten[.:]{1,2}\w+)", text):
        return f"litert-torch cannot convert the model at torch op {m.group(1)}: {first}"
    if m := re.search(r"'tfl\.(\w+)' op", text):
        return f"the LiteRT converter fails on op {m.group(1).upper()}: {first}"
    return f"litert-torch cannot convert the model ({type(e).__name__}): {first}"


# -- float .tflite -> quantized (ai-edge-quantizer) ----------------------------------

def quantize_float_tflite(float_model: bytes, scheme: str, per_channel: bool, io: str,
                          calibration: dict[str, np.ndarray], names: list[str], *, plan: Any = None,
                          precision: str = "float", block_size: int = 32) -> tuple[bytes, dict[str, Any]]:
    """A float .tflite (either route's) quantized by ai-edge-quantizer; returns (file, meta).

    `plan` (edgepack.targets.base.QuantPlan): advanced -> MSE weight ranges (ai-edge-quantizer's
    MSE algorithm) and GPTQ rounding of FULLY_CONNECTED weights (its only op for GPTQ);
    activations keep min/max; float_layers -> their ops, and the ops between them
    and the layers reading them, in float (precision "float") or 16-bit activations with int8
    weights (precision "int16", LiteRT's 16x8). Scheme "int4-weights": 4-bit weights per block of
    `block_size` inputs (per channel when 0 or when the op has no blockwise kernel), float compute."""
    notes: list[str] = []
    meta: dict[str, Any] = {"per_channel": bool(per_channel), "quantizer": "ai-edge-quantizer"}
    file_inputs = _signature_tensors(float_model)[0]
    calib = _calibration_set(calibration, file_inputs, names) if scheme == "int8" else None
    masked = _mask_path(float_model) if scheme == "int8" else []
    if masked:
        notes.append(f"kept in float32, as int8 cannot hold the infinite or huge constants (attention masks) "
                     f"they carry: {', '.join(sorted({op for op, _ in masked}))} ({len(masked)} op(s), "
                     f"up to each SOFTMAX)")
    region: list[tuple[str, str]] = []
    if plan is not None and plan.float_layers and scheme == "int8":
        region = region_ops(float_model, plan)
        meta["float_layers"] = [lay.path for lay in plan.float_layers]
        meta["mixed_precision"] = precision
        notes.append(f"kept in {'16-bit activations (16x8)' if precision == 'int16' else 'float'}: "
                     f"{', '.join(lay.path for lay in plan.float_layers)} ({len(region)} op(s))")
    algorithm = "MSE" if plan is not None and plan.advanced and scheme == "int8" else None
    if algorithm:
        meta["advanced"] = {"weights": "MSE ranges; GPTQ rounding for FULLY_CONNECTED" if per_channel
                            else "MSE ranges", "activations": "min/max"}
        notes.append("advanced PTQ: ai-edge-quantizer with MSE weight ranges"
                     + (" and GPTQ rounding of FULLY_CONNECTED weights" if per_channel else ""))
    data = _quantize(float_model, scheme, per_channel, io, calib, masked, region=region, precision=precision,
                     algorithm=algorithm, block_size=block_size)
    if scheme == "int8":
        meta["calibration_samples"] = len(calib)
    if scheme == "int4-weights":
        meta["int4"] = int4_summary(data, block_size)
        notes.append(_int4_note(meta["int4"]))
    meta["notes"] = notes
    return data, meta


_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_3D", "TRANSPOSE_CONV", "CONV_2D_TRANSPOSE")


def _op_name(model: Any, op: Any) -> str:
    """The builtin op's name (CONV_2D, DEQUANTIZE, ...), from LiteRT's own schema."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code = model.operatorCodes[op.opcodeIndex]
    return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def _weighted_ops(model: Any, graph: Any) -> list[tuple[int, str, int]]:
    """(op index, op name, weight numel) of the ops with a constant weight, in graph order."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    out = []
    for i, op in enumerate(graph.operators):
        name = _op_name(model, op)
        if name not in _WEIGHTED or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        weight = graph.tensors[op.inputs[1]]
        data = fb.get_tensor_data(weight, model.buffers) if weight.buffer is not None else None
        if data is None:
            continue
        out.append((i, name, int(np.prod(weight.shape))))
    return out


def region_ops(float_model: bytes, plan: Any) -> list[tuple[str, str]]:
    """(op name, op scope) of the float layers' ops and of the ops between them and the layers
    that read them (a PAD or MEAN there would requantize the tensor). A layer's op is found by
    execution order and weight size: the file's weighted ops follow the model's execution order
    (both routes), and the i-th layer is the next op with its number of weights."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = _read(float_model)
    graph = model.subgraphs[0]
    ops = _weighted_ops(model, graph)
    where: dict[int, int] = {}
    cursor = 0
    for lay in plan.layers:
        for k in range(cursor, len(ops)):
            if ops[k][2] == lay.weight_numel:
                where[lay.index] = ops[k][0]
                cursor = k + 1
                break
    missing = [lay.path for lay in plan.float_layers if lay.index not in where]
    if missing:
        raise ConversionError(f"tflite-int8: cannot find the op of layer(s) {', '.join(missing)} in the file "
                              f"({len(ops)} ops with weights, {len(plan.layers)} layers in torch)")
    weighted = {i for i, _, _ in ops}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(graph.operators):
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(int(t), []).append(i)
    chosen = {where[lay.index] for lay in plan.float_layers}
    between: set[int] = set()
    stack = [t for i in chosen for t in graph.operators[i].outputs if t >= 0]
    seen: set[int] = set()
    while stack:
        t = int(stack.pop())
        if t in seen:
            continue
        seen.add(t)
        for i in consumers.get(t, []):
            if i in weighted or i in between:
                continue
            between.add(i)
            stack.extend(x for x in graph.operators[i].outputs if x >= 0)
    return [(_op_name(model, graph.operators[i]), fb.get_op_scope(graph.operators[i], graph.tensors))
            for i in sorted(chosen | between)]


def int4_summary(data: bytes, block_size: int) -> dict[str, Any]:
    """How many weighted ops got 4-bit weights; the rest keep float weights (no int4 kernel)."""
    model = _read(data)
    graph = model.subgraphs[0]
    ops = _weighted_ops_any(model, graph)
    int4 = [name for name, dtype in ops if dtype == 17]     # TensorType.INT4
    return {"block_size": block_size, "layers": len(ops), "int4_layers": len(int4),
            "float_ops": sorted({name for name, dtype in ops if dtype != 17})}


def _weighted_ops_any(model: Any, graph: Any) -> list[tuple[str, int]]:
    """(op name, weight tensor type) of every weighted op, the weight found through a DEQUANTIZE."""
    producer = {int(t): op for op in graph.operators for t in op.outputs if t >= 0}
    out = []
    for op in graph.operators:
        name = _op_name(model, op)
        if name not in _WEIGHTED or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        t = int(op.inputs[1])
        src = producer.get(t)
        if src is not None and _op_name(model, src) == "DEQUANTIZE":
            t = int(src.inputs[0])
        out.append((name, int(graph.tensors[t].type)))
    return out


def _int4_note(info: dict[str, Any]) -> str:
    where = f"blocks of {info['block_size']}" if info["block_size"] in (32, 64, 128, 256) else "per channel"
    text = (f"4-bit weights in {info['int4_layers']} of {info['layers']} weighted ops (FULLY_CONNECTED in {where}, "
            f"int8 activations at run time; CONV_2D per channel, float compute)")
    if info["float_ops"]:
        text += f"; float weights in {', '.join(info['float_ops'])} (ai-edge-quantizer has no 4-bit recipe for them)"
    return text


def _calibration_set(calibration: dict[str, np.ndarray], file_inputs: list[dict[str, Any]],
                     names: list[str]) -> list[dict[str, np.ndarray]]:
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ConversionError(f"calibration data has no input named {', '.join(map(repr, missing))}")
    counts = {len(calibration[n]) for n in names}
    if len(counts) != 1 or not counts.pop():
        raise ConversionError(f"calibration data: every input needs the same, non-zero number of samples "
                              f"({', '.join(f'{n}: {len(calibration[n])}' for n in names)})")
    dtypes = {t["name"]: np.dtype(t["dtype"]) for t in file_inputs}   # the float file's own dtypes (int64 -> int32)
    n = len(calibration[names[0]])
    return [{name: np.ascontiguousarray(calibration[name][i:i + 1]).astype(dtypes.get(name, calibration[name].dtype),
                                                                          copy=False)
             for name in names} for i in range(n)]


def _quantize(float_model: bytes, scheme: str, per_channel: bool, io: str,
              calib: list[dict[str, np.ndarray]] | None, masked: list[tuple[str, str]], *,
              region: list[tuple[str, str]] = (), precision: str = "float", algorithm: str | None = None,
              block_size: int = 32) -> bytes:
    with quiet() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from ai_edge_quantizer import default_policy, qtyping, quantizer
            from ai_edge_quantizer.algorithm_manager import AlgorithmName

            ops = qtyping.TFLOperationName
            granularity = qtyping.QuantGranularity.CHANNELWISE if per_channel else qtyping.QuantGranularity.TENSORWISE
            algo = {"algorithm_key": AlgorithmName.MSE} if algorithm == "MSE" else {}
            qt = quantizer.Quantizer(bytearray(float_model))
            if scheme == "int4-weights":
                # ai-edge-quantizer 0.10's 4-bit recipes: block-wise for FULLY_CONNECTED and
                # EMBEDDING_LOOKUP as dynamic range (int4 weights, int8 activations at run time:
                # XNNPACK's qd8-f32-qb4w kernels), per channel weight-only for CONV_2D and BATCH_MATMUL.
                blocks = {32: "BLOCKWISE_32", 64: "BLOCKWISE_64", 128: "BLOCKWISE_128", 256: "BLOCKWISE_256"}
                granularity4 = getattr(qtyping.QuantGranularity, blocks.get(block_size, "CHANNELWISE"))
                for op in (ops.FULLY_CONNECTED, ops.EMBEDDING_LOOKUP):
                    qt.add_dynamic_config(".*", op, 4, granularity4)
                for op in (ops.CONV_2D, ops.BATCH_MATMUL):
                    qt.add_weight_only_config(".*", op, 4, qtyping.QuantGranularity.CHANNELWISE)
            elif scheme == "dynamic":
                qt.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8, granularity)
            elif io == "int8":
                qt.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8, granularity, **algo)
            else:
                # Every op the static int8 policy covers, except the graph's INPUT and OUTPUT.
                supported = _static_int8_ops(default_policy.DEFAULT_JSON_POLICY, ops)
                for op in supported:
                    qt.add_static_config(".*", op, 8, 8, granularity, **algo)
            if algorithm == "MSE" and scheme == "int8" and per_channel:
                # GPTQ: weights rounded to compensate each other's error on the calibration inputs
                # (the AdaRound-like algorithm ai-edge-quantizer 0.10 has, for FULLY_CONNECTED only)
                qt.add_static_config(".*", ops.FULLY_CONNECTED, 8, 8, granularity, algorithm_key=AlgorithmName.GPTQ)
                if io == "uint8":
                    boundary = qtyping.OpQuantizationConfig(
                        activation_tensor_config=qtyping.TensorQuantizationConfig(
                            num_bits=8, symmetric=False, dtype=qtyping.TensorDataType.UINT),
                        compute_precision=qtyping.ComputePrecision.INTEGER, explicit_dequantize=False)
                    for op in (ops.INPUT, ops.OUTPUT):
                        qt.update_quantization_recipe(regex=".*", operation_name=op, op_config=boundary)
            if scheme == "int8":
                for op_name, scope in masked:
                    qt.update_quantization_recipe(regex=f"^{re.escape(scope)}$", operation_name=ops(op_name),
                                                  algorithm_key=AlgorithmName.NO_QUANTIZE)
                a16 = set(json.loads(default_policy.DEFAULT_JSON_POLICY)["ops_per_config"]["static_wi8_ai16"])
                for op_name, scope in region:
                    regex = f"^{re.escape(scope)}$"
                    if precision == "int16" and op_name in a16:
                        qt.add_static_config(regex, ops(op_name), 16, 8, granularity)
                    else:
                        qt.update_quantization_recipe(regex=regex, operation_name=ops(op_name),
                                                      algorithm_key=AlgorithmName.NO_QUANTIZE)
            result = qt.calibrate({SIGNATURE: calib}) if qt.need_calibration else None
            return bytes(qt.quantize(result, enable_progress_report=False).quantized_model)
        except ConversionError:
            raise
        except Exception as e:
            lines = _ANSI.sub("", str(e)).strip().splitlines() or [
                line for line in _ANSI.sub("", log.text).splitlines() if "error" in line.lower()][-1:]
            first = (lines or [type(e).__name__])[0][:300]
            raise ConversionError(f"ai-edge-quantizer ({scheme}, io {io}) failed: {first}") from None


def _static_int8_ops(json_policy: str, ops: Any) -> list[Any]:
    """The ops ai-edge-quantizer's policy allows for static int8 (its own list), less INPUT and OUTPUT."""
    listed = json.loads(json_policy)["ops_per_config"]["static_wi8_ai8"]
    skip = {ops.INPUT.value, ops.OUTPUT.value}
    return [ops(name) for name in dict.fromkeys(listed) if name not in skip]


# Float constants of this magnitude or more are masks (-inf, finfo.min, -1e9, -1e4), not values: an
# int8 scale cannot represent them beside ordinary activations.
_MASK_MAGNITUDE = 1e4
# Ops whose output is bounded whatever their input: the mask path ends there.
_MASK_SINKS = {"SOFTMAX", "LOGISTIC", "EXP"}


def _mask_path(float_model: bytes) -> list[tuple[str, str]]:
    """(op name, op scope) of every op fed, directly or through other such ops, by a float
    constant holding +-inf or |x| >= 1e4, up to and including the SOFTMAX it feeds.

    ai-edge-quantizer 0.10 quantizes such a constant with a scale derived from its finite
    part: torch's key_padding_mask (SELECT_V2(mask, -inf, 0) -> ADD to the attention
    scores) comes out as all zeros, and the int8 model silently attends to padding."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = _read(float_model)
    found: list[tuple[str, str]] = []
    for graph in model.subgraphs:
        marked: set[int] = set()
        for index, tensor in enumerate(graph.tensors):
            if tensor.type != 0 or tensor.buffer is None or tensor.buffer >= len(model.buffers):
                continue
            data = fb.get_tensor_data(tensor, model.buffers)
            if data is not None and data.size and not np.all(np.abs(data) < _MASK_MAGNITUDE):
                marked.add(index)
        if not marked:
            continue
        for op in graph.operators:
            if not any(i in marked for i in op.inputs if i >= 0):
                continue
            name = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            if name is None:
                continue
            found.append((name, fb.get_op_scope(op, graph.tensors)))
            if name not in _MASK_SINKS:
                marked.update(i for i in op.outputs if i >= 0)
    return found


# -- inspection -----------------------------------------------------------------------

def _read(data: bytes) -> Any:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    return tfl_flatbuffer_utils.read_model(bytearray(data))


_NP = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
       10: "float64", 16: "uint32", 17: "uint16"}


def _signature_tensors(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The signature's inputs and outputs, in the subgraph's own order (forward order)."""
    model = _read(data)
    sig = next((s for s in model.signatureDefs or [] if _s(s.signatureKey) == SIGNATURE), None)
    if sig is None:
        raise ConversionError(f"litert-torch route: the converted file has no {SIGNATURE!r} signature")
    graph = model.subgraphs[sig.subgraphIndex]

    def entries(tensor_maps: list[Any], order: list[int]) -> list[dict[str, Any]]:
        by_index = {m.tensorIndex: _s(m.name) for m in tensor_maps or []}
        result = []
        for index in order:
            t = graph.tensors[index]
            q = t.quantization
            scale = list(q.scale) if q is not None and q.scale is not None and len(q.scale) else []
            zp = list(q.zeroPoint) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else []
            result.append({"name": by_index.get(index, _s(t.name)), "tensor_name": _s(t.name), "index": int(index),
                           "shape": [int(s) for s in t.shape], "dtype": _NP.get(t.type, str(t.type)),
                           "scale": float(scale[0]) if len(scale) == 1 else None,
                           "zero_point": int(zp[0]) if len(zp) == 1 else 0})
        return result

    return entries(sig.inputs, list(graph.inputs)), entries(sig.outputs, list(graph.outputs))


def _check_names(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], names: list[str],
                 output_names: list[str]) -> None:
    got_in, got_out = [t["name"] for t in inputs], [t["name"] for t in outputs]
    if got_in != names or got_out != output_names:
        raise ConversionError(f"litert-torch route: the file's signature is inputs {got_in}, outputs {got_out}; "
                              f"expected {names}, {output_names}")


def _float_ops(data: bytes) -> list[str]:
    """Ops (other than QUANTIZE/DEQUANTIZE) whose first input or first output is float32."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = _read(data)
    found: set[str] = set()
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            ends = [i for i in list(op.inputs)[:1] + list(op.outputs)[:1] if i >= 0]
            if any(graph.tensors[i].type == schema.TensorType.FLOAT32 for i in ends):
                found.add(name)
    return sorted(found)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
