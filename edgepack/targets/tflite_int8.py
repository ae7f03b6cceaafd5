"""tflite-int8: ONNX -> onnx2tf (a channel-last Keras model) -> TFLiteConverter -> .tflite,
or, as the second route, the torch module -> litert-torch -> ai-edge-quantizer (_litert_torch.py).

Routes (quantize.routes; default both): onnx2tf first (the best-tested path for CNNs,
NHWC), litert-torch second (attention, LayerNorm, exact GELU, several inputs).
A route fails when its converter fails or when LiteRT cannot load, prepare (XNNPACK
included) and run one sample of its file (check_litert_runs); the quantize stage keeps the
first route whose file meets the budget.

onnx2tf does what it is best at, rewriting the NCHW ONNX graph as an NHWC TensorFlow
graph, and nothing else: `disable_model_save=True` makes it hand back the Keras model
without writing any file, and we run TensorFlow's TFLiteConverter once, with exactly
the scheme asked for. Left to itself, onnx2tf 1.28 would instead
  - write seven .tflite files (float32, float16, dynamic range, int8 with float I/O,
    full int8, and two int16-activation variants) and calibrate four times;
  - allow TF Select ("Flex") ops, so an op without a TFLite kernel becomes a model
    that tflite-runtime and LiteRT's stock interpreter cannot load — we allow TFLite
    builtins only, so such an op fails here, at build time, with its name;
  - only warn when a quantized conversion fails, leaving its file missing.

What the file cannot promise goes to meta["notes"] for the report: ops the converter left
in float32 inside an int8 model (no int8 kernel: fine on a CPU, not on an int8-only
accelerator), and op versions newer than tflite-runtime 2.14 can load.

The same ONNX and calibration data give a byte-identical .tflite, across conversions
and processes (Keras's layer-name counters, which end up in the file, are reset).

Input layout: NHWC, TFLite's native layout (no Transpose op before the first conv,
and onnx2tf's main, best-tested path). meta["layout"] says so; Target.to_model_layout
transposes NCHW data for it. Inputs of another rank keep their ONNX shape.

onnx2tf quirks this module works around (1.28.8):
  - it rewrites the ONNX file it is given (op renaming), so it gets a copy;
  - for an RGB NHWC input it downloads sample images from GitHub for its internal
    checks, and fails offline (PINTO0309/onnx2tf#932): we hand it our calibration
    images instead;
  - it sets CUDA_VISIBLE_DEVICES=-1 for the whole process: restored afterwards;
  - it calls sys.exit() on some errors: caught and turned into ConversionError;
  - importing it seeds Python's, NumPy's and TensorFlow's global RNGs with 0.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ..artifacts import Artifact, atomic_write_bytes
from ..errors import ConversionError
from ..arrays import Arrays, n_samples
from ._onnx import OUTPUT_NAME, quiet
from .base import QuantPlan, Target, to_layout

_ONNX_LAYOUTS = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What to do about TF ops that have no TFLite builtin kernel, where there is a known way out.
_FLEX_HINTS = {
    "Erf": "exact GELU becomes Erf below ONNX opset 20: set export.opset = 20 (ONNX Gelu, TFLite GELU) "
           "or use GELU(approximate='tanh')",
}


class TfliteInt8(Target):
    name = "tflite-int8"
    format = "tflite"
    runtime = "ai-edge-litert"
    runtime_min_version = "2.3"
    # What else loads these files: the manifest lists it (tflite-runtime is what ARM boards run).
    runtime_alternatives: ClassVar[tuple[dict[str, str], ...]] = ({"name": "tflite-runtime", "min_version": "2.14"},)
    # onnx2tf declares no dependencies: onnx_graphsurgeon and sng4onnx are what it imports.
    requires = ("onnx2tf", "onnx_graphsurgeon", "sng4onnx", "tensorflow", "tf_keras", "ai_edge_litert", "onnx",
                "onnxruntime")
    quantizer: ClassVar[str] = ("TFLiteConverter post-training quantization (representative dataset); "
                                "ai-edge-quantizer on the litert-torch route")
    route_names = ("onnx2tf", "litert-torch")
    schemes = ("int8", "dynamic", "none", "int4-weights")
    recovery_steps = ("ptq", "advanced", "mixed", "qat")
    mixed_precisions = ("float", "int16")

    # -- convert ----------------------------------------------------------------
    def convert(self, exported: Artifact, quantize: Any, calibration: Arrays | np.ndarray, out_dir: Path,
                *, progress: Any = None, validation: Any = None, task: Any = None, route: str | None = None,
                module: Artifact | None = None, plan: QuantPlan | None = None) -> Artifact:
        plan = plan or QuantPlan()
        route = route or self.routes(quantize)[0]
        if route == "litert-torch":
            return self._convert_litert_torch(exported, quantize, calibration, Path(out_dir), progress, module, plan)
        calib = self.convert_inputs(exported, quantize, calibration)
        scheme = quantize.scheme
        # Recovery steps and 4-bit weights need per-op recipes: ai-edge-quantizer on onnx2tf's float
        # file. Plain PTQ keeps TensorFlow's converter (the same file as before recovery existed).
        per_op = scheme == "int4-weights" or (scheme == "int8" and not plan.default)
        io = quantize.io if scheme == "int8" else "float32"
        notes = []
        if io != quantize.io:
            notes.append(f"quantize.io = {quantize.io!r} applies to full-integer models only; "
                         f"scheme {scheme!r} keeps float32 input and output")

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        advance = progress(f"{self.name}: convert ({scheme})", 2) if progress else (lambda n=1: None)
        work = Path(tempfile.mkdtemp(prefix=".onnx2tf-", dir=out_dir))
        output_names = list(exported.meta.get("output_names") or [OUTPUT_NAME])
        try:
            model, layouts = _onnx_to_keras(exported.path, calib, work)
            advance(1)
            model_layout_calib = {k: to_layout(v, layouts[k]) for k, v in calib.items()}
            qmeta: dict[str, Any] = {}
            if per_op:
                from ._litert_torch import quantize_float_tflite

                float_data = _to_tflite(model, "none", quantize.per_channel, "float32", model_layout_calib,
                                        output_names)
                data, qmeta = quantize_float_tflite(float_data, scheme, quantize.per_channel, io, model_layout_calib,
                                                    list(model_layout_calib), plan=plan,
                                                    precision=quantize.mixed_precision,
                                                    block_size=quantize.weights_block_size)
                notes += qmeta.pop("notes")
            else:
                data = _to_tflite(model, scheme, quantize.per_channel, io, model_layout_calib, output_names)
            dest = out_dir / "model.tflite"
            atomic_write_bytes(dest, data)
            advance(1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        meta: dict[str, Any] = {"layout": next(iter(layouts.values())), "layouts": layouts, "scheme": scheme,
                                "io": io, "output_names": output_names, "route": "onnx2tf", **qmeta}
        output_layouts = _output_layouts(dest, exported.meta.get("output_shapes") or {})
        if output_layouts:
            meta["output_layouts"] = output_layouts
            notes.append("channel-last outputs (as onnx2tf makes them): "
                         + ", ".join(f"{n} {layout}" for n, layout in output_layouts.items()))
        version, float_ops = _inspect(data)
        if version:
            meta["tflite_min_runtime_version"] = version   # the converter's own estimate, from the op versions
            for alt in self.runtime_alternatives:
                if _version_tuple(version) > _version_tuple(alt["min_version"]):
                    notes.append(f"its op versions need a TFLite runtime >= {version}: "
                                 f"{alt['name']} {alt['min_version']} cannot load it")
        if scheme == "int8" and float_ops:
            # The converter keeps ops without an int8 kernel in float, between DEQUANTIZE and QUANTIZE,
            # even with int8-only builtins asked for: fine on a CPU, not on an int8-only accelerator.
            meta["float_ops"] = float_ops
            if not plan.float_layers:
                notes.append(f"not fully integer: {', '.join(float_ops)} run in float32 (no int8 kernel)")
        if scheme != "none":
            meta["per_channel"] = bool(quantize.per_channel)
        if scheme == "int8":
            meta["calibration_samples"] = n_samples(calib)
        if notes:
            meta["notes"] = notes
        check_litert_runs(dest, model_layout_calib, "onnx2tf")
        return Artifact.from_file("tflite", dest, **meta)

    def _convert_litert_torch(self, exported: Artifact, quantize: Any, calibration: Any, out_dir: Path,
                              progress: Any, module: Artifact | None, plan: QuantPlan) -> Artifact:
        """The direct route: the torch module (not the ONNX file) through litert-torch, then
        ai-edge-quantizer; see _litert_torch.py. Torch layout: no transpose of any input."""
        from ..torchmodel import load_module
        from ._litert_torch import convert_litert_torch

        if module is None:
            raise ConversionError("tflite-int8 route litert-torch converts the torch module, and none was given")
        calib = self.convert_inputs(exported, quantize, calibration)
        output_names = list(exported.meta.get("output_names") or [OUTPUT_NAME])
        dest = out_dir / "model.tflite"
        sample = {k: v[:1] for k, v in calib.items()}
        meta = convert_litert_torch(load_module(module), sample, calib, quantize.scheme, quantize.per_channel,
                                    quantize.io, output_names, dest, progress, plan=plan,
                                    precision=quantize.mixed_precision, block_size=quantize.weights_block_size)
        meta["layouts"] = {k: _ONNX_LAYOUTS.get(v.ndim, "NC") for k, v in calib.items()}
        meta["layout"] = next(iter(meta["layouts"].values()))
        meta["output_names"] = output_names
        meta["io_tensors"] = {"inputs": meta.pop("inputs"), "outputs": meta.pop("outputs")}
        version, _ = _inspect(dest.read_bytes())
        if version:
            meta["tflite_min_runtime_version"] = version
            for alt in self.runtime_alternatives:
                if _version_tuple(version) > _version_tuple(alt["min_version"]):
                    meta["notes"].append(f"its op versions need a TFLite runtime >= {version}: "
                                         f"{alt['name']} {alt['min_version']} cannot load it")
        check_litert_runs(dest, calib, "litert-torch")
        return Artifact.from_file("tflite", dest, **meta)

    # -- inspect ----------------------------------------------------------------
    def io_details(self, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(artifact.path))
        in_names, out_names = _signature_names(interpreter)
        layouts = artifact.meta.get("layouts") or {}
        inputs = [_tensor_entry(d, in_names, None) for d in interpreter.get_input_details()]
        for e in inputs:
            e["layout"] = layouts.get(e["name"], _ONNX_LAYOUTS.get(len(e["shape"])))
        out_layouts = artifact.meta.get("output_layouts") or {}
        outputs = {e["name"]: e for e in (_tensor_entry(d, out_names, _ONNX_LAYOUTS.get(len(d["shape"])))
                                          for d in interpreter.get_output_details())}
        for name, layout in out_layouts.items():
            if name in outputs:
                outputs[name]["layout"] = layout
        # In the model's output order (a TF signature sorts its outputs by name).
        order = [n for n in artifact.meta.get("output_names", []) if n in outputs]
        return {"inputs": inputs, "outputs": [outputs[n] for n in order] + [e for n, e in outputs.items()
                                                                             if n not in order]}


# -- ONNX -> Keras (onnx2tf) ------------------------------------------------------

def _onnx_to_keras(onnx_path: Path, calib: Arrays, work: Path) -> tuple[Any, dict[str, str]]:
    """Run onnx2tf in `work`; return (Keras model, {input name: layout it takes})."""
    import onnx

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TensorFlow's first import
    ranks = _input_ranks(onnx.load(str(onnx_path), load_external_data=False))
    # 4-D float inputs (images) become NHWC, onnx2tf's native path; every other input keeps
    # its ONNX shape (ids, masks, audio, features), which onnx2tf must be told.
    layouts = {name: "NHWC" if rank == 4 and np.issubdtype(calib[name].dtype, np.floating)
               else _ONNX_LAYOUTS.get(rank, "N" + "?" * (rank - 1)) for name, rank in ranks.items()}
    onnx_copy = work / "model.onnx"
    shutil.copyfile(onnx_path, onnx_copy)      # onnx2tf rewrites its input file in place
    kwargs: dict[str, Any] = {}
    images = None
    if n_samples(calib):
        # onnx2tf checks its layout rewrites by running ONNX and TF on this (first) sample.
        entries = []
        for name in ranks:
            sample = to_layout(calib[name][:1], layouts[name])
            np.save(work / f"sample-{len(entries)}.npy", sample)
            entries.append([name, str(work / f"sample-{len(entries)}.npy"), 0.0, 1.0])
            if images is None and sample.ndim == 4 and sample.shape[-1] == 3:
                images = sample
        kwargs["custom_input_op_name_np_data_path"] = entries
    keep = [name for name, layout in layouts.items() if layout != "NHWC"]
    if keep:
        kwargs["keep_shape_absolutely_input_names"] = keep

    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    with quiet() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import onnx2tf
            import onnx2tf.onnx2tf as onnx2tf_impl
            import tf_keras
            from unittest import mock

            # Keras numbers its layers process-wide ("tf.nn.convolution_74") and those names end
            # up in the .tflite: resetting the counters makes the file depend on the model only.
            tf_keras.backend.clear_session()

            images = images if images is not None else np.zeros((1, 32, 32, 3), np.float32)
            # Its RGB self-test data comes from GitHub; offline that fails (onnx2tf#932). Ours will do.
            with mock.patch.object(onnx2tf_impl, "download_test_image_data", lambda: images):
                model = onnx2tf.convert(
                    input_onnx_file_path=str(onnx_copy),
                    output_folder_path=str(work / "saved_model"),
                    disable_model_save=True,      # just the Keras model: we run the TFLite converter ourselves
                    output_signaturedefs=True,    # op names as for a saved model (no leading "/")
                    not_use_onnxsim=True,         # onnxsim is not installed; it would only warn
                    non_verbose=True,
                    verbosity="error",
                    **kwargs,
                )
        except (Exception, SystemExit) as e:
            raise ConversionError(_onnx2tf_failure(e, log.text, onnx_copy)) from None
        finally:
            if cuda_visible is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    return model, layouts


def _input_ranks(graph: Any) -> dict[str, int]:
    initializers = {i.name for i in graph.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in graph.graph.input if i.name not in initializers}


def _onnx2tf_failure(e: BaseException, log: str, onnx_copy: Path) -> str:
    log = _ANSI.sub("", log)
    op = None
    if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("onnx2tf.ops."):
        op = f"ONNX op {e.name.rsplit('.', 1)[1]} (onnx2tf has no converter for it)"
    elif m := re.search(r"(\w+) OP is not yet implemented", log):
        op = f"ONNX op {m.group(1)} (onnx2tf has no converter for it)"
    elif node := getattr(e, "onnx_op_name", None):
        op = f"ONNX op {_op_type(onnx_copy, node) or '?'} (node {re.sub('^wa/', '/', node)})"
    if isinstance(e, SystemExit):
        errors = [line.removeprefix("ERROR:").strip() for line in log.splitlines() if line.startswith("ERROR:")]
        detail = errors[-1] if errors else f"onnx2tf exited with status {e.code}"
    else:
        detail = (_ANSI.sub("", str(e)).strip().splitlines() or [type(e).__name__])[0]
    return f"onnx2tf cannot convert the ONNX model{': ' + op if op else ''}: {detail}"


def _op_type(onnx_path: Path, node_name: str) -> str | None:
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:
        return None
    wanted = {node_name, re.sub("^wa/", "/", node_name), node_name.replace("__", ":")}
    return next((n.op_type for n in graph.node if n.name in wanted), None)


# -- Keras -> TFLite ------------------------------------------------------------------

def _to_tflite(model: Any, scheme: str, per_channel: bool, io: str, calib: Arrays, output_names: list[str]) -> bytes:
    import tensorflow as tf

    names = list(calib)
    spec = [tf.TensorSpec(t.shape, t.dtype, name=name) for t, name in zip(model.inputs, names)]

    def call(*xs: Any) -> dict[str, Any]:
        out = model(list(xs) if len(xs) > 1 else xs[0])
        out = out if isinstance(out, (list, tuple)) else [out]
        # A dict result names the signature's outputs as the ONNX model's.
        return dict(zip(output_names, out))

    function = tf.function(call, input_signature=spec)
    # The converter needs a trackable object to write a signature ("serving_default": inputs ->
    # outputs) into the file. Not the Keras model: its metadata alone takes 8 s to serialize for
    # a 1.4 M-param CNN, and onnx2tf's weights are graph constants anyway. A bare tf.Module will do.
    holder = tf.Module()
    holder.serving_default = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]   # no Flex ops: see the module doc
    if scheme in ("int8", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = not per_channel   # what onnx2tf's quant_type sets
    if scheme == "int8":
        def representative_dataset() -> Iterator[list[np.ndarray]]:
            for i in range(n_samples(calib)):
                yield [calib[name][i:i + 1].astype(_tf_dtype(t)) for name, t in zip(names, model.inputs)]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8/uint8 I/O applies to float inputs and outputs; ids and masks keep their type.
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    with quiet() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return converter.convert()
        except Exception as e:
            raise ConversionError(_converter_failure(e, log.text, scheme)) from None


def _tf_dtype(tensor: Any) -> str:
    return tensor.dtype.as_numpy_dtype.__name__ if hasattr(tensor.dtype, "as_numpy_dtype") else str(tensor.dtype)


def _converter_failure(e: BaseException, log: str, scheme: str) -> str:
    text = _ANSI.sub("", f"{e}\n{log}")
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    for listed in re.findall(r"TF Select ops: ([\w, ]+)", text):
        ops.update(op.strip() for op in listed.split(",") if op.strip())
    if ops:
        hints = "".join(f"; {op}: {_FLEX_HINTS[op]}" for op in sorted(ops) if op in _FLEX_HINTS)
        return (f"TFLite has no builtin kernel for the TensorFlow op(s) {', '.join(sorted(ops))} that onnx2tf "
                f"made from the model; they would need TF Select (Flex) ops, which tflite-runtime and "
                f"LiteRT's stock interpreter cannot run{hints}")
    if m := re.search(r"'tfl\.(\w+)' op", text):
        return f"TFLite converter ({scheme}) fails on op {m.group(1).upper()}: {_first_error_line(text)}"
    return f"TFLite converter ({scheme}) failed: {_first_error_line(text)}"


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return (lines or [text.strip().splitlines()[0] if text.strip() else "unknown error"])[0][:500]


def _inspect(data: bytes) -> tuple[str | None, list[str]]:
    """(the "min_runtime_version" the converter wrote into the file, the ops that compute in
    float32 other than QUANTIZE/DEQUANTIZE). ((None, []) if the file cannot be read this way.)"""
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:
        return None, []
    model = schema.Model.GetRootAsModel(data, 0)
    version = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            version = bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).rstrip(b"\0").decode()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    float_ops: set[str] = set()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            inputs = [op.Inputs(j) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
            if name not in ("QUANTIZE", "DEQUANTIZE") and inputs \
                    and graph.Tensors(inputs[0]).Type() == schema.TensorType.FLOAT32:
                float_ops.add(name)
    return version, sorted(float_ops)


def _output_layouts(path: Path, torch_shapes: dict[str, list[int]]) -> dict[str, str]:
    """{output: "NHWC"/"NWC"} for outputs whose file shape is torch's with the channels moved
    last (onnx2tf turns 4-D and 3-D maps channel-last), so they can be turned back."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    names = _signature_names(interpreter)[1]
    out = {}
    for d in interpreter.get_output_details():
        name = names.get(d["index"], d["name"])
        want = torch_shapes.get(name)
        got = [int(s) for s in d["shape"]]
        if want and got != list(want) and len(got) in (3, 4, 5) and got == [want[0], *want[2:], want[1]]:
            out[name] = {3: "NWC", 4: "NHWC", 5: "NDHWC"}[len(got)]
    return out


def check_litert_runs(path: Path, inputs: Arrays, route: str) -> None:
    """Load the file in LiteRT as a device would (its default XNNPACK delegate included),
    allocate and run one sample: a file its own runtime cannot prepare is a failed route,
    not a bundle (seen: onnx2tf's PReLU graph that XNNPACK refuses, "failed to create
    XNNPACK runtime")."""
    from ai_edge_litert.interpreter import Interpreter

    failure = None
    with quiet() as log:
        try:
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
            details = interpreter.get_input_details()
            by_index = {d["index"]: d for d in details}
            signature = next(iter(interpreter._get_full_signature_list().values()), {}).get("inputs", {})
            if set(signature) == set(inputs):
                details = [by_index[signature[name]] for name in inputs]
            for d, x in zip(details, inputs.values()):
                x = x[:1]
                if np.issubdtype(d["dtype"], np.integer) and np.issubdtype(x.dtype, np.floating):
                    scale, zp = d["quantization"]
                    info = np.iinfo(d["dtype"])
                    x = np.clip(np.round(x / (scale or 1.0) + zp), info.min, info.max)
                interpreter.set_tensor(d["index"], x.astype(d["dtype"]).reshape(d["shape"]))
            interpreter.invoke()
        except Exception as e:
            failure = e
    if failure is not None:
        said = [line.strip() for line in log.text.splitlines() if "ERROR" in line or "rror" in line][-1:]
        raise ConversionError(f"tflite-int8 route {route}: LiteRT cannot run the converted file: "
                              f"{_first_error_line(str(failure))}" + (f" ({said[0]})" if said else ""))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


# -- io_details helpers ---------------------------------------------------------------

def _signature_names(interpreter: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Tensor index -> signature name ("input", "output"), when the file has a signature."""
    try:
        runner = interpreter.get_signature_runner()
        ins = {d["index"]: name for name, d in runner.get_input_details().items()}
        outs = {d["index"]: name for name, d in runner.get_output_details().items()}
        return ins, outs
    except Exception:      # a file without signatures: tensor names only
        return {}, {}


def _tensor_entry(d: dict[str, Any], names: dict[int, str], layout: str | None) -> dict[str, Any]:
    scale, zero_point = d.get("quantization", (0.0, 0))
    quantized = bool(scale)
    return {
        "name": names.get(d["index"], d["name"]),
        "tensor_name": d["name"],
        "index": int(d["index"]),
        "shape": [int(s) for s in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "layout": layout,
        "scale": float(scale) if quantized else None,
        "zero_point": int(zero_point) if quantized else 0,
    }
