"""Self-check of the test zoo (not a pytest module): data, training, metric, export per model.

    .venv/bin/python tests/zoo/check_zoo.py [--threads 1] [--budget 5] [--only detector,vit]
                                            [--write-npz DIR]

For each model: makes its data splits, trains it (train.fit), evaluates it on the "data" split,
checks ``torch.export.export(model, args)``, ``torch.onnx.export(model, args, f, dynamo=True,
input_names=..., output_names=...)`` and that onnxruntime reproduces torch on the same inputs
(when onnx/onnxruntime import). Prints a table. With --write-npz, writes data.npz / train.npz per
model (in the edgepack data convention) and the trained weights, model_<name>.pt.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _metric_text(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items())


def _probe_output_name(model, args, input_names, output_names) -> str:
    """Export with the given output names and say whether the ONNX graph is still valid."""
    import onnx
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stdout, sys.stdout = sys.stdout, io.StringIO()
            try:
                torch.onnx.export(model, args, str(path), dynamo=True,
                                  input_names=input_names, output_names=output_names)
            finally:
                sys.stdout = stdout
        try:
            onnx.checker.check_model(onnx.load(str(path)))
            return f"output_names={output_names}: valid"
        except Exception as exc:  # noqa: BLE001
            return f"output_names={output_names}: INVALID ONNX ({_short(exc)})"


def check_one(name: str, budget: float, out_dir: Path | None) -> dict:
    import numpy as np
    import torch

    from tests.zoo import data as zdata
    from tests.zoo import models, train

    spec = models.SPECS[name]
    row = {"model": name, "params": 0, "train_s": 0.0, "metric": "", "export": "-", "onnx": "-", "ort": "-"}
    splits = zdata.make_splits(name)
    model, info = train.fit(name, splits, seconds_budget=budget)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["train_s"] = info["seconds"]
    row["epochs"] = info["epochs"]
    row["cpu_s"] = info["cpu_seconds"]
    row["metric"] = _metric_text(train.evaluate(name, model, splits["data"]))
    if out_dir is not None:
        d = out_dir / name
        zdata.write_npz(d / "data.npz", splits["data"])
        zdata.write_npz(d / "train.npz", splits["train"])
        torch.save(model.state_dict(), d / f"model_{name}.pt")

    # example inputs: the first 4 evaluation samples, dtypes as stored
    args = tuple(torch.from_numpy(np.ascontiguousarray(a[:4])) for a in zdata.inputs_of(splits["data"]))
    with torch.no_grad():
        ref = model(*args)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]

    try:
        ep = torch.export.export(model, args)
        got = ep.module()(*args)
        got = [t.detach().numpy() for t in (got if isinstance(got, tuple) else (got,))]
        err = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        row["export"] = "ok" if err < 1e-4 else f"mismatch {err:.1e}"
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["export"] = "FAIL"
        row["export_error"] = _short(exc)

    input_names = list(spec.inputs)
    output_names = list(spec.outputs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                buf = io.StringIO()
                stdout, sys.stdout = sys.stdout, buf          # the dynamo exporter is chatty
                try:
                    torch.onnx.export(model, args, str(path), dynamo=True,
                                      input_names=input_names, output_names=output_names)
                finally:
                    sys.stdout = stdout
            row["onnx"] = "ok"
            try:
                import onnx
                import onnxruntime as ort
            except ImportError:
                row["ort"] = "n/a"
            else:
                proto = onnx.load(str(path))
                onnx.checker.check_model(proto)
                row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                names_in = [i.name for i in sess.get_inputs()]
                names_out = [o.name for o in sess.get_outputs()]
                assert names_in == input_names, f"ONNX inputs {names_in} != {input_names}"
                assert names_out == output_names, f"ONNX outputs {names_out} != {output_names}"
                types = {i.name: i.type for i in sess.get_inputs()}
                feeds = {n: a.numpy() for n, a in zip(input_names, args)}
                outs = sess.run(output_names, feeds)
                err = max(float(np.abs(a - b).max()) for a, b in zip(ref, outs))
                row["ort"] = f"ok {err:.0e}" if err < 1e-4 else f"MISMATCH {err:.1e}"
                row["onnx_input_types"] = types
        collide = spec.extra.get("colliding_output_name")
        if collide:
            row["name_probe"] = _probe_output_name(model, args, input_names, [collide])
    except Exception as exc:  # noqa: BLE001
        if row["onnx"] == "-":
            row["onnx"] = "FAIL"
        else:
            row["ort"] = "FAIL"
        row["onnx_error"] = _short(exc)
        if "--verbose" in sys.argv:
            traceback.print_exc()
    return row


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import logging

    import torch

    from tests.zoo import models

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)     # "torchvision is not installed"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CI has 2 shared cores)")
    p.add_argument("--budget", type=float, default=5.0, help="training seconds budget per model")
    p.add_argument("--only", default="", help="comma-separated model names")
    p.add_argument("--write-npz", default=None, help="folder to write data/train .npz and weights into")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = [n for n in a.only.split(",") if n] or list(models.NAMES)
    out_dir = Path(a.write_npz) if a.write_npz else None

    rows = []
    start = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        row = check_one(name, a.budget, out_dir)
        row["total_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(f"  {name}: done in {row['total_s']} s", file=sys.stderr, flush=True)

    cols = [("model", 13), ("params", 7), ("epochs", 6), ("train_s", 7), ("cpu_s", 5), ("export", 8), ("onnx", 5),
            ("ort", 9), ("total_s", 7), ("metric", 0)]
    print(f"torch {torch.__version__}, threads {a.threads}, training budget {a.budget} CPU s "
          f"(train_s: wall, cpu_s: process CPU time)")
    print("  ".join(c.ljust(w) if w else c for c, w in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) if w else str(r.get(c, "")) for c, w in cols))
    failures = []
    for r in rows:
        for key in ("export_error", "onnx_error"):
            if key in r:
                failures.append(f"{r['model']} {key}: {r[key]}")
        if "name_probe" in r:
            print(f"  {r['model']}: probe {r['name_probe']}")
        if "onnx_input_types" in r:
            print(f"  {r['model']}: onnx opset {r.get('opset')}, inputs {r['onnx_input_types']}")
    for f in failures:
        print("  " + f)
    print(f"total {time.perf_counter() - start:.1f} s")
    bad = [r for r in rows if r["export"] != "ok" or r["onnx"] not in ("ok",) or not str(r["ort"]).startswith(("ok", "n/a"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
