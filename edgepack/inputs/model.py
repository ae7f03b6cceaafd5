"""Model loading: a Python factory (`file.py:fn` or `pkg.mod:fn`) plus optional
weights, or a `torch.export` program (.pt2). The input shape comes from the data.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arrays import Arrays, describe, flatten_outputs, n_samples, output_names, to_torch
from ..errors import UsageError

DEFAULT_SPEC = "edgepack.inputs.default_model:make_teacher"
DEFAULT_NAME = "digits-resnet"


@dataclass
class LoadedModel:
    module: "object"          # torch.nn.Module, in eval mode
    name: str                 # used for the bundle name
    spec: str                 # what the user gave, for the report
    sha256: str               # identity: weights + structure, module_identity() (keys the cache)


def module_identity(module) -> str:
    """What the model is, not how it was asked for: every state_dict tensor (name, shape,
    dtype, bytes), the printed module tree, and each module class's qualified name and, for
    classes outside torch, the source file that defines them (forward() lives there). A
    factory that loads its own checkpoint, or imports its architecture from a module that
    changes, changes this. (A model file's classes are named after its path, see
    _import_factory, and the cached pickles need that name: moving the file changes it.)"""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        try:
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):          # quantized or sparse tensors: their serialised form
            buf = io.BytesIO()
            torch.save(t.detach().cpu(), buf)
            h.update(buf.getvalue())
    h.update(repr(module).encode())
    classes = sorted({(type(m).__module__, type(m).__qualname__) for m in module.modules()})
    for mod_name, qualname in classes:
        h.update(f"|{mod_name}.{qualname}".encode())
        if mod_name.split(".")[0] != "torch":
            source = getattr(sys.modules.get(mod_name), "__file__", None)
            if source and source.endswith(".py") and Path(source).is_file():
                h.update(hashlib.sha256(Path(source).read_bytes()).digest())
    return h.hexdigest()


def first_line(e: BaseException) -> str:
    """An exception as `Type: its first line`, for a one-line message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def import_callable(spec: str, what: str = "factory"):
    """The function `spec` names (FILE.py:FUNCTION or package.module:FUNCTION)."""
    return _import_factory(spec, what)


def _import_factory(spec: str, what: str = "factory"):
    if ":" not in spec:
        raise UsageError(f"{spec!r}: expected FILE.py:FUNCTION, package.module:FUNCTION"
                         + (" or a .pt2 file" if what == "factory" else ""))
    mod_ref, _, fn_name = spec.rpartition(":")
    if mod_ref.endswith(".py") or "/" in mod_ref:
        path = Path(mod_ref).resolve()
        kind = "model" if what == "factory" else what
        if not path.exists():
            raise UsageError(f"{mod_ref}: {kind} file not found")
        if not path.is_file():
            raise UsageError(f"{mod_ref}: not a file (the {kind} must be a Python file)")
        # A stable module name lets cached (pickled) models of this factory load again.
        mod_name = "edgepack_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise UsageError(f"{mod_ref}: importing the {kind} file failed: {first_line(e)}") from None
    else:
        try:
            module = importlib.import_module(mod_ref)
        except Exception as e:      # ImportError, or the module itself failing as it runs
            raise UsageError(f"{spec!r}: cannot import module {mod_ref!r} ({first_line(e)})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UsageError(f"{mod_ref}: no {what} {fn_name!r} in it (callables there: {', '.join(names[:12]) or 'none'})")
    return fn


def load_model(spec: str | None, weights: str | Path | None = None) -> LoadedModel:
    import torch

    if spec is None:
        from .default_model import WEIGHTS_PATH

        spec, weights = DEFAULT_SPEC, weights or WEIGHTS_PATH
        name = DEFAULT_NAME
    else:
        name = Path(spec.split(":")[0]).stem if ":" in spec else Path(spec).stem

    if spec.endswith(".pt2"):
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"{spec}: model file not found")
        try:
            module = torch.export.load(str(path)).module()
        except Exception as e:
            raise UsageError(f"{spec}: not a loadable torch.export program ({first_line(e)})") from None
        if weights is not None:
            raise UsageError(f"--weights {weights}: a .pt2 program carries its own weights")
        return LoadedModel(module, name, spec, hashlib.sha256(path.read_bytes()).hexdigest())

    factory = _import_factory(spec)
    try:
        # Seeded (the caller's random state is left as it was): a factory that initialises at
        # random is then one model, with one identity, build after build.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = factory()
    except Exception as e:
        raise UsageError(f"{spec}: the factory raised {first_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{spec}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        wpath = Path(weights)
        if not wpath.exists():
            raise UsageError(f"{wpath}: weights file not found")
        try:
            state = torch.load(wpath, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"{wpath}: not a loadable state_dict ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UsageError(f"{wpath}: holds a {type(state).__name__}, expected a state_dict")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split("\n\t")[1:2]).strip() or str(e).splitlines()[0]
            raise UsageError(f"{wpath}: weights do not match the model from {spec}: {detail[:300]}") from None
    module.eval()
    return LoadedModel(module, name, spec, module_identity(module))


def order_inputs(model: LoadedModel, inputs: Arrays, source: str) -> list[str]:
    """The data's input names in the order the model's forward takes them.

    One input goes to the first argument whatever its name. Several must be named as the
    forward's arguments (x.input_ids for `forward(self, input_ids, attention_mask)`);
    a forward that takes *args takes them in the file's order."""
    import inspect

    names = list(inputs)
    if len(names) == 1:
        return names
    try:
        params = list(inspect.signature(model.module.forward).parameters.values())
    except (TypeError, ValueError):
        return names
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return names
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [n for n in names if n not in positional]
    if unknown:
        raise UsageError(f"{source}: input(s) {', '.join('x.' + n for n in unknown)} are not arguments of "
                         f"{model.spec}'s forward({', '.join(positional)}): name each x.<name> after one")
    missing = [p.name for p in params if p.name not in names and p.default is p.empty
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise UsageError(f"{source}: no x.{missing[0]} for {model.spec}'s forward argument {missing[0]!r}")
    return [n for n in positional if n in names]


def check_forward(model: LoadedModel, sample: Arrays, data_source: str) -> tuple[list[np.ndarray], list[str]]:
    """Run the model once on a few samples; return its outputs (numpy) and their names."""
    import torch

    try:
        with torch.no_grad():
            out = model.module(*to_torch(sample))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = (f"of shape {tuple(next(iter(sample.values())).shape)}" if len(sample) == 1
                else f"({describe(sample)})")
        raise UsageError(f"{model.spec}: forward fails on input {what} from {data_source}: {msg}") from None
    tensors = flatten_outputs(out, model.spec)
    for name, t in zip(output_names(out), tensors):
        if t.ndim == 0 or t.shape[0] != n_samples(sample):
            raise UsageError(f"{model.spec}: output {name} has shape {tuple(t.shape)}: every output needs the "
                             f"batch dimension first ({n_samples(sample)} samples in, so ({n_samples(sample)}, ...))")
    return ([t.float().numpy() if t.is_floating_point() else t.numpy() for t in tensors], output_names(out))
