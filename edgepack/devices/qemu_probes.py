"""Smoke tests that each runtime really runs under the emulator, not only imports.

Each probe is a Python snippet run by the emulated interpreter; it prints one JSON line
{"version": ...} when a tiny model gave the right answer (y = 2x + 1 on [1, 2, 3, 4]),
and fails otherwise. The TFLite and ExecuTorch models are embedded (1-2 KB each, made
with TFLiteConverter and torch.export + to_edge): the emulator root has no converter.
"""
from __future__ import annotations

import base64

PROBE_TFLITE = base64.b64decode("""
HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAjAAAAOQAAADEAQAA1AEAANwDAAADAAAAAQAAABAAAAAAAAoAEAAM
AAgABAAKAAAADAAAABwAAAA8AAAADwAAAHNlcnZpbmdfZGVmYXVsdAABAAAABAAAAJz///8EAAAABAAAAAgAAABvdXRwdXRfMAAA
AAABAAAABAAAAM7+//8EAAAAAQAAAHgAAAACAAAANAAAAAQAAADc////BwAAAAQAAAATAAAAQ09OVkVSU0lPTl9NRVRBREFUQQAI
AAwACAAEAAgAAAAGAAAABAAAABMAAABtaW5fcnVudGltZV92ZXJzaW9uAAgAAADcAAAA1AAAAMAAAACkAAAAnAAAAJQAAAB0AAAA
BAAAAF7///8EAAAAYAAAABAAAAAAAAAACAAOAAgABAAIAAAAEAAAACQAAAAAAAYACAAEAAYAAAAEAAAAAAAAAAwAGAAUABAADAAE
AAwAAAA3ZX+wFzbd7QMAAAACAAAABAAAAAYAAAAyLjIxLjAAAMr///8EAAAAEAAAADEuNS4wAAAAAAAAAAAAAACc/f//oP3//+7/
//8EAAAABAAAAAAAAEAAAAYACAAEAAYAAAAEAAAABAAAAAAAgD/M/f//0P3//w8AAABNTElSIENvbnZlcnRlZC4AAQAAABQAAAAA
AA4AGAAUABAADAAIAAQADgAAABQAAAAcAAAAoAAAAKQAAACoAAAABAAAAG1haW4AAAAAAgAAAFgAAAAUAAAAAAAOABgAFAAQAAwA
CwAEAA4AAAAUAAAAAAAACxAAAAAUAAAAAQAAAFj+//8BAAAABAAAAAIAAAADAAAAAQAAAAAADgAUAAAAEAAMAAsABAAOAAAAEAAA
AAAAABUMAAAAEAAAAJT+//8BAAAAAwAAAAIAAAAAAAAAAgAAAAEAAAAEAAAAAQAAAAAAAAAFAAAA9AAAAKwAAAB8AAAASAAAAAQA
AAA2////AAAAARAAAAAQAAAABQAAACAAAADs/v//EQAAAFBhcnRpdGlvbmVkQ2FsbDowAAAAAgAAAAEAAAAEAAAAdv///wAAAAEQ
AAAAEAAAAAQAAAAQAAAALP///wMAAABtdWwAAgAAAAEAAAAEAAAApv///wAAAAEQAAAAEAAAAAMAAAAUAAAAXP///wUAAABtdWwv
eQAAAAAAAADS////AAAAARAAAAAQAAAAAgAAABQAAACI////BQAAAGFkZC95AAAAAAAAAAAAFgAYABQAAAAQAAwACAAAAAAAAAAH
ABYAAAAAAAABEAAAABAAAAABAAAAIAAAAMz///8TAAAAc2VydmluZ19kZWZhdWx0X3g6MAACAAAAAQAAAAQAAAACAAAAHAAAAAgA
AAAEAAQABAAAAAwADAALAAAAAAAEAAwAAAASAAAAAAAAEg==
""")

PROBE_PTE = base64.b64decode("""
PAAAAEVUMTJlaDAwIAAAAOgEAAAAAAAAAAUAAAAAAAAUAAAAAAAAAAAAAAAQABgAAAAUABAADAAIAAQAEAAAABQAAAA4AAAAVAAA
AFQAAABUAAAAkP7//wQAAAADAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAEAAAAMAAAACAAQAAAABAAIAAAAFAAAAAAA
AAAAAAAAAAAAAAAAAAABAAAAHAAAAAAAFgAoACQAIAAcABgAFAAQAAwACAAEABYAAAAkAAAANAAAADQAAACEAAAAGAEAABwBAAAg
AQAAqAIAAPQDAAACAAAAAAAAAAAAAAAgAAAAAAAAAAAAAAACAAAALAAAAAQAAACM/f//CAAAAAwAAAADAAAAb3V0AAkAAABhdGVu
OjphZGQAAACw/f//CAAAAAwAAAADAAAAb3V0AAkAAABhdGVuOjptdWwAAAABAAAAEAAAAAAACgAQAAwACAAEAAoAAAAMAAAAdAAA
AHQAAAACAAAAOAAAAAQAAABE/v//CAAAAAAAAAEQ/v//CAAAAAEAAAAFAAAAAwAAAAEAAAAFAAAABAAAAAQAAAB0/v//EAAAAAAA
AAEIAAgAAAAEAAgAAAAEAAAABAAAAAIAAAAAAAAAAwAAAAMAAAAAAAAAAAAAAAEAAAAEAAAAAQAAAAIAAAAGAAAASAEAABQBAADA
AAAAZAAAACQAAAAEAAAAWP///wwAAAAAAgYADAAEAAYAAAABAAAAAAAAAPT+//8IAAAAAAAABcb///8QAAAAFAAAABgAAAAAAAAG
Xv///wEAAAACAAAAAAEAAAIAAAABAAAABAAAALD///8YAAAAAAUSABQAEwAAAAwACAAAAAAABAASAAAAEAAAABgAAAAcAAAAAAAA
BiD///8QAAAAAQAAAAIAAAAAAQAAAgAAAAEAAAAEAAAACAAKAAkABAAIAAAAGAAAAAAFEgASABEAAAAMAAgAAAAAAAQAEgAAABQA
AAAYAAAAHAAAAAAGBgAIAAQABgAAAAEAAAACAAAAAAEAAAIAAAABAAAABAAAANj///8IAAAAAAAABdD///8CAAAADAAAAAwAAAAA
AAAGAAAAAAAAAAAIAAwACwAEAAgAAAAYAAAAAAAABRAAFAATAAAADAAIAAAABAAQAAAAAQAAAAwAAAAMAAAAAAAABgAAAAAAAAAA
CAAMAAgABAAIAAAACAAAAEQAAAA5AAAAWzEsIHsidHlwZSI6IG51bGwsICJjb250ZXh0IjogbnVsbCwgImNoaWxkcmVuX3NwZWMi
OiBbXX1dAAAA/gAAAFsxLCB7InR5cGUiOiAiYnVpbHRpbnMudHVwbGUiLCAiY29udGV4dCI6ICJudWxsIiwgImNoaWxkcmVuX3Nw
ZWMiOiBbeyJ0eXBlIjogImJ1aWx0aW5zLnR1cGxlIiwgImNvbnRleHQiOiAibnVsbCIsICJjaGlsZHJlbl9zcGVjIjogW3sidHlw
ZSI6IG51bGwsICJjb250ZXh0IjogbnVsbCwgImNoaWxkcmVuX3NwZWMiOiBbXX1dfSwgeyJ0eXBlIjogImJ1aWx0aW5zLmRpY3Qi
LCAiY29udGV4dCI6ICJbXSIsICJjaGlsZHJlbl9zcGVjIjogW119XX1dAAAHAAAAZm9yd2FyZAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAABAAAAAAAAAAAAAAAAAAACAPw==
""")

_CHECK = """
import json, numpy as np
x = np.array([[1, 2, 3, 4]], np.float32)
def check(y):
    y = np.asarray(y, np.float32).reshape(1, 4)
    if not np.allclose(y, 2 * x + 1):
        raise SystemExit("wrong answer: " + str(y.tolist()))
"""

_TFLITE = _CHECK + """
import {module}, {module}.interpreter as tfl
from importlib.metadata import version
it = tfl.Interpreter(model_content=open({model!r}, "rb").read(), num_threads=1)
it.allocate_tensors()
it.set_tensor(it.get_input_details()[0]["index"], x)
it.invoke()
check(it.get_tensor(it.get_output_details()[0]["index"]))
print(json.dumps({{"version": version({dist!r})}}))
"""

_OPENVINO = _CHECK + """
import openvino as ov
from openvino import opset13 as ops
p = ops.parameter([1, 4], np.float32)
y = ops.add(ops.multiply(p, ops.constant(np.float32(2))), ops.constant(np.float32(1)))
compiled = ov.Core().compile_model(ov.Model([y], [p]), "CPU", {"INFERENCE_NUM_THREADS": 1})
check(compiled(x)[0])
print(json.dumps({"version": ov.get_version()}))
"""

_EXECUTORCH = _CHECK + """
import torch
from executorch.runtime import Runtime
from importlib.metadata import version
method = Runtime.get().load_program({model!r}).load_method("forward")
check(method.execute([torch.from_numpy(x)])[0].numpy())
print(json.dumps({{"version": version("executorch")}}))
"""


def probe_script(runtime: str, model_path: str) -> str:
    """The snippet that proves `runtime` runs; `model_path` is where the probe model was written."""
    if runtime in ("tflite_runtime", "ai_edge_litert"):
        dist = "tflite-runtime" if runtime == "tflite_runtime" else "ai-edge-litert"
        return _TFLITE.format(module=runtime, model=model_path, dist=dist)
    if runtime == "openvino":
        return _OPENVINO
    if runtime == "executorch":
        return _EXECUTORCH.format(model=model_path)
    raise ValueError(runtime)


def probe_model(runtime: str) -> tuple[str, bytes] | None:
    """(file name, bytes) of the model the probe loads, or None when it builds its own."""
    if runtime in ("tflite_runtime", "ai_edge_litert"):
        return "probe.tflite", PROBE_TFLITE
    if runtime == "executorch":
        return "probe.pte", PROBE_PTE
    return None
