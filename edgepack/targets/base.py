"""The target adapter seam: one module per target, each a subclass of `Target`.

An adapter declares its format, the runtime that validates it and the packages it
needs; it imports its toolchain inside its methods so that `edgepack targets` and
`--help` start fast. Subclassing registers it: the core never names a target.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..arrays import Arrays, as_arrays, n_samples
from ..artifacts import Artifact
from ..errors import ToolchainMissing, UsageError
from ..layers import Layer
from ..sensitivity import QuantSim

REGISTRY: dict[str, type["Target"]] = {}
_EXPORT_FORMATS = {"onnx": "from ONNX", "pt2": "a torch.export program (.pt2)"}


@dataclass(frozen=True)
class QuantPlan:
    """What a recovery step asks convert() for, beyond the profile's [quantize] settings.

    advanced: the target's better post-training quantization (its own list: SmoothQuant, bias
    correction, MSE ranges). float_layers: layers that run in float with their outputs, which
    the target maps onto its own ops (see edgepack.layers: the float region of the layers the
    mixed step chose); `layers` lists every quantizable layer in execution order, to find them."""

    step: str = "ptq"
    advanced: bool = False
    float_layers: tuple[Layer, ...] = ()
    layers: tuple[Layer, ...] = ()

    @property
    def default(self) -> bool:
        return not self.advanced and not self.float_layers


class Target(ABC):
    name: ClassVar[str]
    format: ClassVar[str]            # file format of the artifact: "tflite", "openvino", "pte"
    runtime: ClassVar[str]           # the runtime package that loads it on a device
    runtime_min_version: ClassVar[str] = ""
    # Settings the runtime was run with when the bundle was validated, for app teams to use too.
    runtime_config: ClassVar[dict[str, str]] = {}
    requires: ClassVar[tuple[str, ...]] = ()   # importable module names of the toolchain
    export_format: ClassVar[str] = "onnx"      # Artifact.kind that export() makes and convert() takes
    schemes: ClassVar[tuple[str, ...]] = ("int8", "dynamic", "none")
    # Recovery steps it runs (quantize.recovery): the quantize stage passes over the others, saying so.
    recovery_steps: ClassVar[tuple[str, ...]] = ("ptq",)
    # How its int8 quantizer treats activations: the sensitivity simulation copies it.
    quant_sim: ClassVar[QuantSim] = QuantSim()
    # Precisions the mixed step may keep a layer in (quantize.mixed_precision).
    mixed_precisions: ClassVar[tuple[str, ...]] = ("float",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "name", None):
            REGISTRY[cls.name] = cls

    # -- toolchain -------------------------------------------------------------
    @classmethod
    def missing_packages(cls) -> list[str]:
        return [m for m in cls.requires if importlib.util.find_spec(m.split(".")[0]) is None]

    @classmethod
    def check_toolchain(cls) -> None:
        missing = cls.missing_packages()
        if missing:
            raise ToolchainMissing(f"target {cls.name!r} needs the package(s) {', '.join(missing)}: pip install them")

    def check_scheme(self, scheme: str, source: str = "quantize.scheme") -> None:
        if scheme not in self.schemes:
            raise UsageError(f"{source} = {scheme!r} is not supported by target {self.name!r} "
                             f"(supported: {', '.join(self.schemes)})")

    # -- the work ----------------------------------------------------------------
    quantize_config: ClassVar[type | None] = None   # a QuantizeConfig subclass with target-only keys

    def export(self, model: "Any", sample: Arrays | np.ndarray, out_dir: Path, opset: int = 17, *,
               output_names: list[str] | None = None, dynamic_batch: bool = False) -> Artifact:
        """torch.nn.Module -> the format convert() takes. Default: ONNX. `sample`: one sample
        of every input, named, in forward order (a bare array: the one input "input")."""
        from ._onnx import export_onnx

        return export_onnx(model, as_arrays(sample), out_dir / "model.onnx", opset=opset, output_names=output_names,
                           dynamic_batch=dynamic_batch)

    def convert_inputs(self, exported: Artifact, quantize: Any, calibration: Arrays | np.ndarray) -> Arrays:
        """The checks every convert() starts with: a scheme this target supports, the artifact
        kind its export() makes, calibration data for static int8. Returns the calibration
        samples the profile asks for, contiguous, each input in its own dtype."""
        self.check_scheme(quantize.scheme)
        if exported.kind != self.export_format:
            what = _EXPORT_FORMATS.get(self.export_format, f"a {self.export_format!r} artifact")
            raise UsageError(f"target {self.name!r} converts {what}, got a {exported.kind!r} artifact "
                             f"({exported.path})")
        calib = {k: np.ascontiguousarray(v[: quantize.calibration_samples])
                 for k, v in as_arrays(calibration).items()}
        if quantize.scheme == "int8" and n_samples(calib) == 0:
            raise UsageError("quantize.scheme = 'int8' needs calibration data, and the calibration set is empty")
        return calib

    route_names: ClassVar[tuple[str, ...]] = ()   # its conversion routes, in default order (none: one)

    def routes(self, quantize: Any) -> list[str | None]:
        """The conversion routes to try, in order (the stage keeps the first whose file runs and
        meets the budget): quantize.routes' names of this target's routes, else all of them."""
        check_routes(getattr(quantize, "routes", ()))
        if not self.route_names:
            return [None]
        chosen = [r for r in getattr(quantize, "routes", ()) if r in self.route_names]
        return chosen or list(self.route_names)

    @abstractmethod
    def convert(self, exported: Artifact, quantize: Any, calibration: Arrays | np.ndarray, out_dir: Path,
                *, progress: Any = None, validation: tuple[Arrays, Any] | None = None, task: Any = None,
                route: str | None = None, module: Artifact | None = None, plan: QuantPlan | None = None) -> Artifact:
        """Quantize (per `quantize.scheme`, and `plan`: a recovery step's asks) and convert to the target format.

        `calibration`: the model's inputs, named, torch layout, already preprocessed.
        `validation`: (inputs, targets) disjoint from the calibration subset and the evaluation
        split, for a quantizer that controls accuracy itself (NNCF's accuracy control), with
        `task` (edgepack.tasks.Task) to score them; other targets ignore both. `route`: one of
        routes(quantize); `module`: the torch module artifact export() exported, for a route
        that converts from torch directly. Returns the
        artifact with meta["layouts"] ({input: "NCHW"/"NHWC"/...}), meta["layout"] (the first
        input's) and meta["scheme"] set, plus anything the report should show (meta["notes"],
        e.g. reverted layers or delegation).
        """

    @abstractmethod
    def io_details(self, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        """{"inputs": [...], "outputs": [...]}: name, shape, dtype, layout, scale, zero_point."""

    def to_model_layout(self, inputs: Arrays | np.ndarray, artifact: Artifact) -> Arrays:
        """Torch-layout inputs in the layout the artifact takes: channel-last where the
        converter made it so (meta["layouts"], per input), as they are elsewhere."""
        inputs = as_arrays(inputs)
        layouts = artifact.meta.get("layouts") or {}
        first = artifact.meta.get("layout")
        out = {}
        for i, (name, x) in enumerate(inputs.items()):
            layout = layouts.get(name, first if i == 0 else None)
            out[name] = to_layout(x, layout)
        return out


    def from_model_layout(self, outputs: list[np.ndarray], artifact: Artifact) -> list[np.ndarray]:
        """Outputs as the file gives them -> torch's layout (meta["output_layouts"]: a
        channel-last layout per output where the converter made one)."""
        layouts = artifact.meta.get("output_layouts") or {}
        names = artifact.meta.get("output_names") or []
        return [from_layout(o, layouts.get(n)) for n, o in zip(names, outputs)] + outputs[len(names):] \
            if layouts else outputs


def from_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
    """Channel-last data (NHWC, NWC, NDHWC) back to channel-first (torch)."""
    if layout in ("NHWC", "NWC", "NDHWC") and x.ndim == len(layout):
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))
    return x


def to_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
    """Channel-first (torch) data in a channel-last layout: NHWC, NWC, NDHWC."""
    if layout in ("NHWC", "NWC", "NDHWC") and x.ndim == len(layout):
        return np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x


def check_routes(names: Any) -> None:
    """A route name no target has is a typo: exit 2 naming the routes there are."""
    known = {r for cls in all_targets().values() for r in cls.route_names}
    unknown = [r for r in names if r not in known]
    if unknown:
        raise UsageError(f"quantize.routes: no target has a route {unknown[0]!r} (routes: {', '.join(sorted(known))})")


def _discover() -> None:
    pkg = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__package__}.{mod.name}")


def get_target(name: str) -> Target:
    _discover()
    if name not in REGISTRY:
        raise UsageError(f"unknown target {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]()


def all_targets() -> dict[str, type[Target]]:
    _discover()
    return dict(sorted(REGISTRY.items()))


def expand_targets(names: tuple[str, ...] | list[str]) -> list[str]:
    """`all` means every profile that has an adapter; names keep their order, once each."""
    from ..config import PROFILES_DIR

    out: list[str] = []
    for n in names:
        expanded = ([p.stem for p in sorted(PROFILES_DIR.glob("*.toml")) if p.stem in all_targets()]
                    if n == "all" else [n])
        out += [e for e in expanded if e not in out]
    return out
