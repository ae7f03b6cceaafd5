"""Named arrays: a model's inputs and outputs as ordered {name: array} dicts, batch first.

Models as app teams ship them take several inputs, each in its own dtype (float32 images
or audio, int64 token ids, bool or int masks), and return one tensor, a tuple or a dict.
Inside edgepack they travel as `Arrays`: an insertion-ordered dict of numpy arrays, in
the order the model's forward takes them (inputs) or returns them (outputs). Nothing
here casts: an int64 id stays int64 from the user's .npz to the device.

Output names: a dict output keeps its keys; one tensor is "output"; a tuple or list is
"output_0", "output_1", ... (the converters flatten dicts in insertion order too).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np

Arrays = dict[str, np.ndarray]

DEFAULT_INPUT = "input"
DEFAULT_OUTPUT = "output"


def n_samples(arrays: Arrays) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def take(arrays: Arrays, index: Any) -> Arrays:
    """The same samples of every array (a slice, an index array or a boolean mask)."""
    return {k: v[index] for k, v in arrays.items()}


def head(arrays: Arrays, n: int) -> Arrays:
    return take(arrays, slice(0, n))


def sample_shapes(arrays: Arrays) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape[1:]) for k, v in arrays.items()}


def describe(arrays: Arrays) -> str:
    """`input_ids int64 (16,), attention_mask int64 (16,)`: for messages."""
    return ", ".join(f"{k} {v.dtype} {tuple(v.shape[1:])}" for k, v in arrays.items())


def is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def to_torch(arrays: Arrays) -> tuple[Any, ...]:
    """Positional torch tensors in the model's input order (float64 data becomes float32:
    the models and every runtime compute in float32)."""
    import torch

    out = []
    for a in arrays.values():
        a = np.ascontiguousarray(a.astype(np.float32) if a.dtype == np.float64 else a)
        out.append(torch.from_numpy(a))
    return tuple(out)


def flatten_outputs(out: Any, where: str = "the model") -> list[Any]:
    """A forward's result as a list of tensors: one tensor, a tuple/list of tensors or a dict."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    values = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else None
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        kind = type(out).__name__ if values is None else ", ".join(type(v).__name__ for v in values) or "nothing"
        from .errors import UsageError

        raise UsageError(f"{where}: forward returns {kind}; expected a tensor, or a tuple, list or dict of tensors")
    return values


def output_names(out: Any) -> list[str]:
    if isinstance(out, dict):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return [f"{DEFAULT_OUTPUT}_{i}" for i in range(len(out))]
    return [DEFAULT_OUTPUT]


def forward(module: Any, inputs: Arrays) -> list[Any]:
    """One call of the module on `inputs` (already a batch), outputs flattened."""
    return flatten_outputs(module(*to_torch(inputs)))


def predict(module: Any, inputs: Arrays, batch: int = 256) -> list[np.ndarray]:
    """The module's outputs on every sample, in output order; floats as float32, other
    dtypes (an argmax, a count) as they come."""
    import torch

    module.eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, n_samples(inputs), batch):
            outs = forward(module, take(inputs, slice(i, i + batch)))
            chunks.append([o.float().numpy() if o.is_floating_point() else o.numpy() for o in outs])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def hash_arrays(*arrays: np.ndarray | Arrays | None) -> str:
    """sha256 over dtype, shape and bytes (and names, for dicts) of every array given."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
        elif isinstance(a, dict):
            for k, v in a.items():
                h.update(k.encode())
                _update(h, v)
        else:
            _update(h, a)
    return h.hexdigest()


def _update(h: Any, a: np.ndarray) -> None:
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())


def sample_digests(arrays: Arrays) -> list[bytes]:
    """One digest per sample over all inputs: to find samples two splits share."""
    n = n_samples(arrays)
    flat = [np.ascontiguousarray(v).reshape(n, -1) for v in arrays.values()]
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for f in flat:
            h.update(f[i].tobytes())
        out.append(h.digest())
    return out


def save_named(path: Any, arrays: Arrays | list[np.ndarray], names: Iterable[str] | None = None) -> None:
    """An .npz whose keys are the names, in order (np.load keeps the order)."""
    if not isinstance(arrays, dict):
        arrays = dict(zip(list(names or []), arrays))
    np.savez(path, **arrays)


def load_named(path: Any) -> Arrays:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def as_arrays(x: Any, name: str = DEFAULT_INPUT) -> Arrays:
    """Arrays as they are; a single array as {name: array} (one-input models)."""
    return dict(x) if isinstance(x, dict) else {name: x}
