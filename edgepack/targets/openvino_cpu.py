"""openvino-cpu: ONNX -> openvino.convert_model (static [1, C, H, W]) -> NNCF -> IR model.xml + model.bin.

Why from ONNX and not straight from the torch module: the ONNX file is the shared
export (`_onnx.export_onnx`), already checked against onnxruntime and failing with the
op's name; OpenVINO's ONNX frontend is its most mature one and keeps the tensor names
"input"/"output" in the IR; convert() then reads a plain cached file instead of
unpickling a module. It costs one ONNX export (~2 s on a small CNN).

Schemes:
  - int8: `nncf.quantize` (static: per-channel symmetric int8 weights, activations
    calibrated on the calibration set; preset, fast bias correction and subset size from
    [quantize]); with `quantize.accuracy_control = true` and labeled validation data,
    `nncf.quantize_with_accuracy_control`, which reverts the layers that cost the most
    accuracy to float until the drop is within `quantize.max_drop_pp` (percentage points
    of top-1 accuracy). The layers left in float are listed in meta["notes"].
  - dynamic: `nncf.compress_weights` (int8 symmetric per-channel weights, float activations).
  - none: the float IR (the FP32 reference).

Traps this module handles (openvino 2026.4, nncf 3.4):
  - an NNCF-quantized model with a dynamic batch fails to compile on some CPUs ("No
    suitable implementations"): the input shape is fixed to [1, C, H, W];
  - `ov.save_model` compresses float weights to f16 by default: turned off, so the
    reference is really FP32 and the int8 model's float leftovers stay FP32;
  - OpenVINO's conversion can be wrong without failing (seen: an rfft graph whose IR
    output gained a dimension): the float IR is run once against onnxruntime, f32 precision;
  - on CPUs with bf16 (AVX512-BF16/AMX) the CPU plugin runs float layers in bf16 unless
    told otherwise (INFERENCE_PRECISION_HINT); an IR cannot pin that (rt_info
    "runtime_options" is ignored for it): the runner decides, and records what ran;
  - NNCF prints progress bars and logs to stdout: kept out of the terminal by quiet().
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ..arrays import Arrays, as_arrays, head, n_samples
from ..artifacts import Artifact
from ..config import QuantizeConfig
from ..errors import ConversionError
from ..sensitivity import QuantSim
from ._onnx import INPUT_NAME, float_diff, quiet
from .base import QuantPlan, Target

# Operations whose second input is a weight: what "layer" means in the notes.
_WEIGHTED = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
             "MatMul")
# Ops between a weight constant and its layer (decompression, layout).
_PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze")
_LAYOUTS = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
# How closely the float IR (f32 precision) must reproduce onnxruntime on one sample.
ATOL = 1e-3
RTOL = 1e-3


class OpenVINOQuantizeConfig(QuantizeConfig):
    """[quantize] for openvino-cpu: the common keys plus NNCF's."""

    preset: Literal["performance", "mixed"] = "performance"   # mixed: asymmetric activations
    fast_bias_correction: bool = True
    subset_size: int = Field(300, ge=1)          # at most this many calibration samples for statistics
    accuracy_control: bool = False               # nncf.quantize_with_accuracy_control (needs labeled data)
    max_drop_pp: float = Field(1.0, ge=0)        # its budget: top-1 accuracy drop, percentage points


class OpenVINOCpu(Target):
    name = "openvino-cpu"
    format = "openvino"
    runtime = "openvino"
    runtime_min_version = "2026.4"    # the version that validated it; IR v11
    # The runner compiles with f32: the CPU plugin's default (f16 on ARM, bf16 on AMX) gives
    # other outputs than the ones validated.
    runtime_config: ClassVar[dict[str, str]] = {"INFERENCE_PRECISION_HINT": "f32"}
    # onnx, onnxscript, onnxruntime: the ONNX export (torch.onnx's dynamo exporter) and its check.
    requires = ("openvino", "nncf", "onnx", "onnxscript", "onnxruntime")
    quantize_config = OpenVINOQuantizeConfig
    quantizer = "NNCF post-training quantization (nncf.quantize / quantize_with_accuracy_control)"
    schemes = ("int8", "dynamic", "none", "int4-weights")
    recovery_steps = ("ptq", "advanced", "mixed", "qat")
    quant_sim = QuantSim(activations="symmetric")     # NNCF's performance preset

    # -- export -------------------------------------------------------------------
    def export(self, model: Any, sample: Arrays | np.ndarray, out_dir: Path, opset: int = 17, *,
               output_names: list[str] | None = None, dynamic_batch: bool = False) -> Artifact:
        try:
            return super().export(model, sample, out_dir, opset, output_names=output_names,
                                  dynamic_batch=dynamic_batch)
        except ConversionError as e:
            raise ConversionError(f"target {self.name!r}: {e}") from e

    # -- convert ------------------------------------------------------------------
    def convert(self, exported: Artifact, quantize: Any, calibration: Arrays | np.ndarray, out_dir: Path,
                *, progress: Any = None, validation: tuple[Arrays, Any] | None = None, task: Any = None,
                route: str | None = None, module: Artifact | None = None, plan: QuantPlan | None = None) -> Artifact:
        """`validation`: (inputs, class ids) for accuracy control, disjoint from calibration and
        evaluation; used when the task is classification."""
        plan = plan or QuantPlan()
        if not isinstance(quantize, OpenVINOQuantizeConfig):     # the common section: NNCF's defaults
            quantize = OpenVINOQuantizeConfig(**quantize.model_dump())
        calib = self.convert_inputs(exported, quantize, calibration)
        if validation is not None:                 # a bare array is the one input's samples
            validation = (as_arrays(validation[0]), validation[1])
        scheme = quantize.scheme
        notes: list[str] = []
        if quantize.io != "float32" and scheme != "none":
            notes.append(f"quantize.io = {quantize.io!r}: OpenVINO IR keeps float32 input and output "
                         "(the int8 body quantizes inside the model)")
        steps = {"int8": 3, "dynamic": 3, "none": 2, "int4-weights": 3}[scheme]
        advance = progress(f"{self.name}: convert ({scheme})", steps) if progress else (lambda n=1: None)

        shapes = _static_shapes(exported, calib)
        model = _convert_onnx(exported.path, shapes)
        sample = head(calib, 1) if n_samples(calib) else {k: np.zeros(v, np.float32) for k, v in shapes.items()}
        check = _check_against_onnxruntime(model, exported.path, sample)
        advance(1)

        layouts = {k: _LAYOUTS.get(len(v), "NC") for k, v in shapes.items()}
        meta: dict[str, Any] = {"layout": next(iter(layouts.values())), "layouts": layouts, "scheme": scheme,
                                "io": "float32", "input_shape": next(iter(shapes.values())),
                                "output_names": list(exported.meta.get("output_names") or []),
                                "float_check_max_abs_diff": check, "route": "onnx"}
        if scheme == "int8":
            if quantize.accuracy_control and validation is not None and task is not None \
                    and task.kind != "classification":
                notes.append(f"quantize.accuracy_control: NNCF's accuracy control scores top-1 accuracy; the task "
                             f"is {getattr(task, 'kind', 'unknown')}, so plain nncf.quantize was used")
                validation = None
            if not plan.default:
                validation = None           # a recovery step decides what stays in float, not NNCF's search
            ignored = _ignored_ops(model, exported.path, plan)
            model, ac = self._quantize(model, quantize, calib, validation, plan, ignored)
            if plan.advanced:
                meta["advanced"] = dict(ADVANCED)
                notes.append("advanced PTQ: NNCF SmoothQuant (convolutions and MatMuls), full bias correction")
            if ignored:
                meta["float_layers"] = [lay.path for lay in plan.float_layers]
                meta["ignored_ops"] = ignored
            meta.update(per_channel=bool(quantize.per_channel), calibration_samples=n_samples(calib),
                        nncf={"preset": quantize.preset, "fast_bias_correction": quantize.fast_bias_correction,
                              "subset_size": min(quantize.subset_size, n_samples(calib))})
            if ac is not None:
                meta["accuracy_control"] = ac
            if plan.default:
                notes.extend(_accuracy_control_notes(ac, quantize))
            advance(1)
        elif scheme == "dynamic":
            import nncf

            with quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
                except Exception as e:
                    raise ConversionError(f"target {self.name!r}: nncf.compress_weights failed: "
                                          f"{_first_line(e)}") from e
            meta["per_channel"] = True
            if not quantize.per_channel:
                notes.append("quantize.per_channel = false: NNCF weight compression is per-channel only")
            advance(1)
        elif scheme == "int4-weights":
            model, info = _compress_int4(model, quantize.weights_block_size, self.name)
            meta["int4"] = info
            notes.append(f"NNCF weight compression: 4-bit symmetric weights, "
                         f"{'group ' + str(info['group_size']) if info['group_size'] > 0 else 'per channel'}"
                         f" ({info['int4_layers']} of {info['layers']} weighted layers in int4"
                         + (f"; {info['int8_layers']} kept in int8: {info['why_int8']}" if info["int8_layers"] else "")
                         + ")")
            advance(1)

        layers = _layer_precision(model, exported.path)
        meta["layers"] = layers
        if scheme != "none":
            notes.append(_layer_summary(layers, scheme))
        _compile_check(model, sample, self.name)
        _stable_names(model)
        meta["weights_sha256"] = _stamp_weights_digest(model)
        dest = _save_ir(model, Path(out_dir))
        advance(1)
        meta["side_files"] = [dest.with_suffix(".bin").name]   # beside model.xml
        meta["notes"] = notes
        return Artifact.from_file("openvino", dest, **meta)

    def _quantize(self, model: Any, quantize: Any, calib: Arrays, validation: tuple[Arrays, Any] | None,
                  plan: QuantPlan | None = None, ignored: list[str] | None = None) -> tuple[Any, dict[str, Any] | None]:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters, QuantizationParameters

        plan = plan or QuantPlan()
        calibration = nncf.Dataset([_feed(calib, i) for i in range(n_samples(calib))])
        kwargs = dict(preset=nncf.QuantizationPreset(quantize.preset), target_device=nncf.TargetDevice.CPU,
                      subset_size=min(quantize.subset_size, n_samples(calib)),
                      fast_bias_correction=quantize.fast_bias_correction)
        advanced: dict[str, Any] = {}
        if not quantize.per_channel:
            advanced["weights_quantization_params"] = QuantizationParameters(per_channel=False)
        if plan.advanced:
            # SmoothQuant runs only for ModelType.TRANSFORMER in NNCF 3.4 (its pipeline's rule),
            # convolutions included when given an alpha (its default leaves them out).
            sq = ADVANCED["smooth_quant"]
            kwargs.update(model_type=nncf.ModelType.TRANSFORMER, fast_bias_correction=False)
            advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=sq["convolution"],
                                                                            matmul=sq["matmul"])
        if advanced:
            kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(**advanced)
        if ignored:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored))
        use_ac = quantize.accuracy_control and validation is not None and n_samples(validation[0]) > 0
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if not use_ac:
                    return nncf.quantize(model, calibration, **kwargs), None
                vx, vy = validation
                items = [(_feed(vx, i), int(vy[i])) for i in range(n_samples(vx))]
                evaluations: list[tuple[int, float]] = []

                def validate(compiled: Any, data: Any) -> tuple[float, list[float]]:
                    output = compiled.output(0)
                    correct = [100.0 * float(np.argmax(compiled(x)[output]) == y) for x, y in data]
                    metric = float(np.mean(correct)) if correct else 0.0
                    evaluations.append((len(correct), metric))
                    return metric, correct

                if "advanced_parameters" in kwargs:
                    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
                result = nncf.quantize_with_accuracy_control(
                    model, calibration, nncf.Dataset(items, lambda item: item[0]), validate,
                    max_drop=quantize.max_drop_pp, drop_type=nncf.DropType.ABSOLUTE, **kwargs)
            except Exception as e:
                raise ConversionError(f"target {self.name!r}: NNCF quantization failed: "
                                      f"{_first_line(e)}") from e
        # NNCF logs its metrics only: the first two full passes are the float and the int8 model.
        full = [m for n, m in evaluations if n == len(items)]
        ac = {"max_drop_pp": quantize.max_drop_pp, "samples": len(items),
              "float_accuracy": full[0] if full else None,
              "int8_accuracy_before": full[1] if len(full) > 1 else None}
        if len(full) > 2:      # layers were reverted: measure what is shipped
            import openvino as ov

            with quiet():
                ac["int8_accuracy"] = validate(ov.Core().compile_model(result, "CPU"), items)[0]
        else:
            ac["int8_accuracy"] = ac["int8_accuracy_before"]
        return result, ac

    # -- inspect ------------------------------------------------------------------
    def io_details(self, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        import openvino as ov

        model = ov.Core().read_model(str(artifact.path))
        layouts = artifact.meta.get("layouts") or {}

        def entry(port: Any, index: int, layout: str | None) -> dict[str, Any]:
            shape = port.get_partial_shape()
            return {"name": port.get_any_name() if port.get_names() else f"{index}",
                    "index": index,
                    "shape": [int(d.get_length()) if d.is_static else -1 for d in shape],
                    "dtype": np.dtype(port.get_element_type().to_dtype()).name,
                    "layout": layout, "scale": None, "zero_point": 0}

        inputs = [entry(p, i, None) for i, p in enumerate(model.inputs)]
        for e in inputs:
            e["layout"] = layouts.get(e["name"], _LAYOUTS.get(len(e["shape"])))
        return {"inputs": inputs,
                "outputs": [entry(p, i, _LAYOUTS.get(len(p.get_partial_shape()))) for i, p in enumerate(model.outputs)]}


# -- ONNX -> ov.Model ---------------------------------------------------------------

def _feed(inputs: Arrays, i: int) -> Any:
    """Sample i as the compiled model takes it: an array for one input, a dict for several."""
    one = {k: v[i:i + 1] for k, v in inputs.items()}
    return next(iter(one.values())) if len(one) == 1 else one


def _static_shapes(exported: Artifact, calib: Arrays) -> dict[str, list[int]]:
    """{input name: [1, ...]}: every input fixed to batch 1 (see the module doc)."""
    entries = exported.meta.get("inputs")
    if entries:
        return {e["name"]: [1, *[int(s) for s in e["shape"][1:]]] for e in entries}
    if exported.meta.get("input_shape"):         # an export made before inputs were named
        return {exported.meta.get("input_name", INPUT_NAME): [1, *exported.meta["input_shape"][1:]]}
    import onnx

    graph = onnx.load(str(exported.path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return {i.name: [1, *[d.dim_value or 1 for d in i.type.tensor_type.shape.dim][1:]]
            for i in graph.input if i.name not in init}


def _convert_onnx(path: Path, shapes: dict[str, list[int]]) -> Any:
    import openvino as ov

    failure = None
    with quiet() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(str(path), input=[(name, shape) for name, shape in shapes.items()])
        except Exception as e:
            failure = e
    text = f"{failure}\n{log.text}"      # log.text is filled when quiet() ends
    listed = re.findall(r"No conversion rule found for operations: ([^\n]+)", text)
    ops = sorted({o.strip() for line in listed for o in line.split(",") if o.strip()})
    if ops:
        names = ", ".join(re.sub(r"^(\w+)-(\d+)$", r"\1 (opset \2)", o) for o in ops)
        raise ConversionError(f"target 'openvino-cpu': OpenVINO's ONNX frontend has no conversion for "
                              f"the ONNX op {names}") from None
    raise ConversionError(f"target 'openvino-cpu': openvino.convert_model failed: {_first_line(failure)}") from None


def _run_compiled(compiled: Any, sample: Arrays) -> list[np.ndarray]:
    result = compiled(_feed(sample, 0))
    return [np.asarray(result[port]) for port in compiled.outputs]


def _check_against_onnxruntime(model: Any, onnx_path: Path, sample: Arrays) -> float:
    """Run the float IR (f32 precision) and onnxruntime on one sample; every output must agree."""
    import onnxruntime as ort
    import openvino as ov

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: sample[i.name] for i in session.get_inputs()})
    try:
        with quiet():
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                              "INFERENCE_NUM_THREADS": 1})
            outputs = _run_compiled(compiled, sample)
    except Exception as e:
        raise ConversionError(f"target 'openvino-cpu': the converted float model does not run on the CPU "
                              f"plugin: {_first_line(e)}") from None
    worst = 0.0
    for i, (got, want) in enumerate(zip(outputs, expected)):
        if got.shape != want.shape:
            raise ConversionError(f"target 'openvino-cpu': OpenVINO's conversion is wrong: output {i} has shape "
                                  f"{list(got.shape)}, the ONNX model gives {list(want.shape)}")
        if not np.issubdtype(want.dtype, np.floating):
            continue
        diff = float_diff(got, want, ATOL, RTOL)
        if diff is None:
            raise ConversionError(f"target 'openvino-cpu': OpenVINO's conversion differs from the ONNX model "
                                  f"on a sample in output {i}: max |diff| = "
                                  f"{np.max(np.abs(got.astype(float) - want)):.3g} (f32 precision)")
        worst = max(worst, diff)
    return worst


def _compile_check(model: Any, sample: Arrays, target: str) -> None:
    """Compile for the CPU plugin and run once: a model that cannot run fails here, not on a device."""
    import openvino as ov

    try:
        with quiet():
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})
            outputs = _run_compiled(compiled, sample)
    except Exception as e:
        raise ConversionError(f"target {target!r}: the CPU plugin cannot compile the converted model: "
                              f"{_first_line(e)}") from None
    if not all(np.all(np.isfinite(o)) for o in outputs if np.issubdtype(o.dtype, np.floating)):
        raise ConversionError(f"target {target!r}: the converted model gives non-finite outputs on a sample")


_AUTO_NAME = re.compile(r"^([A-Za-z]+)_\d+$")


def _stable_names(model: Any) -> None:
    """Renumber OpenVINO's generated node names ("Constant_37097", from a process-wide counter) in
    graph order, so that the same model gives the same model.xml in any process, any run."""
    counters: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        if m := _AUTO_NAME.match(op.get_friendly_name()):
            counters[m.group(1)] += 1
            op.set_friendly_name(f"{m.group(1)}_{counters[m.group(1)]}")


def _stamp_weights_digest(model: Any) -> str:
    """Write a digest of every constant into the model's rt_info, hence into model.xml.

    The artifact's sha256 (the cache's key for every later stage) is model.xml's, and
    model.xml alone holds only offsets into model.bin: without this, two models with the
    same layers and different weights would have the same sha256, and a rebuild after
    retraining would reuse the old validation results."""
    h = hashlib.sha256()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            data = np.ascontiguousarray(op.get_data())
            h.update(f"{op.get_friendly_name()}:{op.get_element_type()}:{list(op.shape)}:".encode())
            h.update(data.tobytes())
    digest = h.hexdigest()
    model.set_rt_info(digest, ["edgepack", "weights_sha256"])
    return digest


def _save_ir(model: Any, out_dir: Path) -> Path:
    """model.xml + model.bin, written in a temporary folder and moved into place (.bin first)."""
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ir-", dir=out_dir))
    try:
        # compress_to_fp16=False: the default would halve every float weight to f16.
        ov.save_model(model, str(work / "model.xml"), compress_to_fp16=False)
        for name in ("model.bin", "model.xml"):
            os.chmod(work / name, 0o644)
            os.replace(work / name, out_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir / "model.xml"


# -- what ended up quantized --------------------------------------------------------

def _layer_precision(model: Any, onnx_path: Path) -> list[dict[str, Any]]:
    """Each weighted layer: its name, the torch module it came from, int8 weights? int8 input?"""
    scopes = _onnx_scopes(onnx_path)
    layers = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED or op.get_input_size() < 2:
            continue
        weight_int8 = _from_int8_constant(op.input_value(1).get_node())
        if op.get_type_name() == "MatMul" and not weight_int8 and not _from_constant(op.input_value(1).get_node()):
            continue         # a MatMul of two activations has no weights to quantize
        source = op.input_value(0).get_node()
        while source.get_type_name() in ("Reshape", "Transpose") and source.get_input_size():
            source = source.input_value(0).get_node()
        name = op.get_friendly_name()
        onnx_node = name.split("/")[0]
        layers.append({"name": name, "module": scopes.get(onnx_node), "type": op.get_type_name(),
                       "int8_weights": weight_int8, "int8_input": source.get_type_name() == "FakeQuantize"})
    return layers


def _from_int8_constant(node: Any, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
    if kind in _PASS_THROUGH and depth < 6:
        return any(_from_int8_constant(node.input_value(i).get_node(), depth + 1)
                   for i in range(node.get_input_size()))
    return False


def _from_constant(node: Any, depth: int = 0) -> bool:
    if node.get_type_name() == "Constant":
        return True
    if node.get_type_name() in _PASS_THROUGH and depth < 6:
        return all(_from_constant(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))
    return False


def _onnx_scopes(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> torch module path, from the dynamo exporter's metadata (best effort)."""
    out = {}
    for name, (modules, fused) in _onnx_node_scopes(onnx_path).items():
        if modules:
            # The exporter folds a BatchNorm into the conv before it and names the result after the BatchNorm.
            out[name] = modules[-1] + (" (conv + batch norm)" if fused else "")
    return out


def _label(layer: dict[str, Any]) -> str:
    return f"{layer['module']} [IR {layer['name']}]" if layer.get("module") else layer["name"]


def _layer_summary(layers: list[dict[str, Any]], scheme: str) -> str:
    if scheme in ("dynamic", "int4-weights"):
        done = [lay for lay in layers if lay["int8_weights"]]
        rest = [lay for lay in layers if not lay["int8_weights"]]
        bits = "int8" if scheme == "dynamic" else "int4/int8"
        text = f"NNCF weight compression: {bits} weights in {len(done)} of {len(layers)} weighted layers"
        return text + (f"; float weights: {', '.join(map(_label, rest))}" if rest else "")
    done = [lay for lay in layers if lay["int8_weights"] and lay["int8_input"]]
    rest = [lay for lay in layers if not (lay["int8_weights"] and lay["int8_input"])]
    text = f"NNCF int8: {len(done)} of {len(layers)} weighted layers quantized"
    return text + (f"; kept in float: {', '.join(map(_label, rest))}" if rest else "")


def _accuracy_control_notes(ac: dict[str, Any] | None, quantize: Any) -> list[str]:
    if not quantize.accuracy_control:
        return []
    if ac is None:
        return ["quantize.accuracy_control = true, but no labeled validation data reached the converter: "
                "plain nncf.quantize was used"]
    before, base = ac.get("int8_accuracy_before"), ac.get("float_accuracy")
    if before is None or base is None:
        return [f"NNCF accuracy control (max drop {quantize.max_drop_pp} pp on {ac['samples']} labeled samples) ran"]
    drop, budget = base - before, quantize.max_drop_pp
    text = (f"NNCF accuracy control on {ac['samples']} labeled samples: float {base:.2f} %, int8 {before:.2f} % "
            f"(drop {drop:.2f} pp, budget {budget} pp)")
    if drop <= budget:
        return [text + ": within budget, nothing reverted"]
    after = ac.get("int8_accuracy", before)
    verdict = "within budget" if base - after <= budget else "still over budget (NNCF could not restore it)"
    return [text + f"; after reverting layers to float: {after:.2f} % (drop {base - after:.2f} pp, {verdict})"]


# The advanced step: SmoothQuant with NNCF's MatMul alpha and, for convolutions, 0.5 (the balance
# of SmoothQuant's paper; NNCF leaves convolutions out by default), and full bias correction.
# Measured on the outlier model (one depthwise channel 1000x wider): 33 % -> 100 %.
ADVANCED = {"smooth_quant": {"convolution": 0.5, "matmul": 0.95}, "bias_correction": "full"}


def _weighted_ops(model: Any) -> list[Any]:
    """The ops with constant weights (what NNCF quantizes as layers), in graph order."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED or op.get_input_size() < 2:
            continue
        if op.get_type_name() == "MatMul" and not _from_constant(op.input_value(1).get_node()):
            continue
        out.append(op)
    return out


def _ignored_ops(model: Any, onnx_path: Path, plan: QuantPlan) -> list[str]:
    """The OpenVINO op names of the layers the plan keeps in float, found by the torch module
    each ONNX node came from (the exporter's name scopes), else by execution order and size."""
    if not plan.float_layers:
        return []
    ops = _weighted_ops(model)
    scopes = _onnx_scope_lists(onnx_path)
    by_module = {m: lay for lay in plan.layers for m in lay.modules}
    found: dict[int, str] = {}
    for op in ops:
        for scope in reversed(scopes.get(op.get_friendly_name().split("/")[0], [])):
            if scope in by_module:
                found.setdefault(by_module[scope].index, op.get_friendly_name())
                break
    if len(found) < len(plan.float_layers) and len(ops) == len(plan.layers) and all(
            _numel(op) == lay.weight_numel for op, lay in zip(ops, plan.layers)):
        found = {lay.index: op.get_friendly_name() for op, lay in zip(ops, plan.layers)}
    missing = [lay.path for lay in plan.float_layers if lay.index not in found]
    if missing:
        raise ConversionError(f"target 'openvino-cpu': cannot find the OpenVINO op of layer(s) {', '.join(missing)} "
                              f"to keep in float ({len(ops)} weighted ops in the model, {len(plan.layers)} layers in "
                              f"torch)")
    return [found[lay.index] for lay in plan.float_layers]


def _numel(op: Any) -> int:
    shape = op.input_value(1).get_partial_shape()
    n = 1
    for d in shape:
        n *= d.get_length() if d.is_static else 1
    return n


def _onnx_scope_lists(onnx_path: Path) -> dict[str, list[str]]:
    """ONNX node name -> the torch module paths it was made in, outermost first."""
    return {name: modules for name, (modules, _) in _onnx_node_scopes(onnx_path).items()}


def _onnx_node_scopes(onnx_path: Path) -> dict[str, tuple[list[str], bool]]:
    """ONNX node name -> (the torch module paths it was made in, outermost first; whether the
    exporter fused a BatchNorm into it), from the dynamo exporter's metadata (best effort)."""
    import ast

    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:
        return {}
    out = {}
    for node in graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        out[node.name] = ([s for s in scopes[:-1] if s],
                          props.get("pkg.onnxscript.rewriter.rule_name") == "FuseBatchNormIntoConv")
    return out


def _compress_int4(model: Any, block_size: int, target: str) -> tuple[Any, dict[str, Any]]:
    """nncf.compress_weights to 4-bit symmetric, in groups of `block_size` inputs (per channel
    when 0), every layer it can (ratio 1, all_layers); a layer whose inputs do not divide into
    such groups gets the largest power-of-two group that fits (NNCF's ADJUST), else NNCF's int8
    backup precision."""
    import nncf

    group = block_size if block_size > 0 else -1
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compressed = nncf.compress_weights(
                model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group, ratio=1.0, all_layers=True,
                advanced_parameters=nncf.AdvancedCompressionParameters(
                    group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
        except Exception as e:
            raise ConversionError(f"target {target!r}: nncf.compress_weights (int4) failed: {_first_line(e)}") from e
    kinds: Counter[str] = Counter()
    for op in _weighted_ops(compressed):
        kinds[_weight_type(op.input_value(1).get_node())] += 1
    layers = sum(kinds.values())
    int4 = kinds["i4"] + kinds["u4"]
    int8 = kinds["i8"] + kinds["u8"]
    return compressed, {"group_size": group, "layers": layers, "int4_layers": int4, "int8_layers": int8,
                        "float_layers": layers - int4 - int8,
                        "why_int8": "NNCF's backup precision for layers it does not take to 4 bits"}


def _weight_type(node: Any, depth: int = 0) -> str:
    if node.get_type_name() == "Constant":
        return node.get_element_type().get_type_name()
    if node.get_type_name() in _PASS_THROUGH and depth < 6:
        kinds = [_weight_type(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size())]
        for k in ("i4", "u4", "i8", "u8"):
            if k in kinds:
                return k
        return kinds[0] if kinds else "?"
    return node.get_type_name()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # OpenVINO's exceptions start with "Check '...' failed at src/...": the reason is further down.
    for line in lines:
        if not line.startswith(("Check '", "Exception from src", "Traceback")):
            return line[:500]
    return (lines[0] if lines else type(e).__name__)[:500]
