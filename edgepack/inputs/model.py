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


def _import_factory(spec: str):
    if ":" not in spec:
        raise UsageError(f"--model {spec!r}: expected FILE.py:FUNCTION, package.module:FUNCTION or a .pt2 file")
    mod_ref, _, fn_name = spec.rpartition(":")
    if mod_ref.endswith(".py") or "/" in mod_ref:
        path = Path(mod_ref).resolve()
        if not path.exists():
            raise UsageError(f"{mod_ref}: model file not found")
        source = path.read_bytes()
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
                raise UsageError(f"{mod_ref}: importing the model file failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(mod_ref)
        except ImportError as e:
            raise UsageError(f"--model {spec!r}: cannot import module {mod_ref!r} ({e})") from None
        source = Path(module.__file__).read_bytes() if getattr(module, "__file__", None) else mod_ref.encode()
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UsageError(f"{mod_ref}: no factory {fn_name!r} in it (callables there: {', '.join(names[:12]) or 'none'})")
    return fn, source


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
            raise UsageError(f"{spec}: not a loadable torch.export program ({type(e).__name__}: {e})") from None
        if weights is not None:
            raise UsageError(f"--weights {weights}: a .pt2 program carries its own weights")
        return LoadedModel(module, name, spec, hashlib.sha256(path.read_bytes()).hexdigest())

    factory, _ = _import_factory(spec)
    try:
        # Seeded (the caller's random state is left as it was): a factory that initialises at
        # random is then one model, with one identity, build after build.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = factory()
    except Exception as e:
        raise UsageError(f"{spec}: the factory raised {type(e).__name__}: {e}") from None
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


def check_forward(model: LoadedModel, sample: np.ndarray, n_classes: int, data_source: str) -> int:
    """Run the model once on the data's shape; return its number of outputs."""
    import torch

    try:
        with torch.no_grad():
            out = model.module(torch.from_numpy(np.ascontiguousarray(sample[:2])))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{model.spec}: forward fails on input of shape {tuple(sample[:2].shape)} "
                         f"from {data_source}: {msg}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{model.spec}: output is {shape}; expected (N, classes) logits")
    if out.shape[1] < n_classes:
        raise UsageError(f"{model.spec}: {out.shape[1]} outputs but the data's labels go up to {n_classes - 1}")
    return int(out.shape[1])
