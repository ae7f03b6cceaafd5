"""The self-check's tolerance rules, on arrays made here."""
from __future__ import annotations

import numpy as np

from edgepack.selfcheck import AcrossTolerance, SelfCheckTolerance, compare, describe, run_identity, tolerance_for

INT8 = {"name": "logits", "dtype": "int8", "scale": 0.05, "zero_point": 3}
FLOAT = {"name": "embedding", "dtype": "float32"}


def test_int8_outputs_may_be_one_step_off_not_two():
    expected = (np.arange(-20, 20).reshape(4, 10) * 0.05).astype(np.float32)
    one = expected.copy()
    one[2, 3] += 0.05
    assert compare([one], [expected], [INT8])["self_check"] == "pass"
    two = expected.copy()
    two[2, 3] += 0.10
    check = compare([two], [expected], [INT8])
    assert check["self_check"] == "fail"
    w = check["worst"]
    assert w["output"] == "logits" and w["sample"] == 2 and w["index"] == [3] and round(w["steps"]) == 2
    assert "2/40" not in describe(check) and "1/40 values off at sample 2 [3]" in describe(check)
    assert compare([two], [expected], [INT8], SelfCheckTolerance(int8_steps=2))["self_check"] == "pass"


def test_float_outputs_scale_with_the_output_and_only_the_reference_samples_count():
    rng = np.random.default_rng(0)
    expected = rng.normal(0, 10, (3, 8)).astype(np.float32)
    near = expected * (1 + 1e-5)
    more = np.concatenate([near, np.full((5, 8), 1e9, np.float32)])     # extra samples beyond the reference
    assert compare([more], [expected], [FLOAT])["self_check"] == "pass"
    off = expected.copy()
    off[0, 0] += 0.01 * np.abs(expected).max()
    assert compare([off], [expected], [FLOAT])["self_check"] == "fail"
    assert compare([off], [expected], [FLOAT], SelfCheckTolerance(rtol=0.02))["self_check"] == "pass"


def test_nan_shape_count_and_integer_outputs_fail_plainly():
    e = np.zeros((2, 4), np.float32)
    nan = e.copy()
    nan[1, 1] = np.nan
    assert compare([nan], [e], [FLOAT])["self_check"] == "fail"
    check = compare([np.zeros((2, 5))], [e], [FLOAT])
    assert check["self_check"] == "fail" and "shape [2, 5]" in describe(check)
    assert compare([e, e], [e], [FLOAT])["self_check"] == "fail"
    ids = np.array([[1, 2], [3, 4]], np.int64)
    spec = {"name": "ids", "dtype": "int64"}
    assert compare([ids], [ids], [spec])["self_check"] == "pass"
    assert compare([ids + np.array([[0, 0], [0, 1]])], [ids], [spec])["self_check"] == "fail"


def test_the_runtime_that_made_the_reference_gets_the_tight_bound_any_other_the_across_one():
    tol = SelfCheckTolerance(rtol=1e-4, across=AcrossTolerance(rtol=0.1))
    host = {"runtime": {"name": "openvino", "version": "2026.4.1"}, "arch": "x86_64", "cpu": {"model": "EPYC"}}
    arm = {"runtime": {"name": "openvino", "version": "2026.4.1"}, "arch": "aarch64"}
    older = {"runtime": {"name": "openvino", "version": "2026.3.0"}, "arch": "x86_64"}
    ref = run_identity(host)
    assert tolerance_for(tol, ref, dict(host, cpu={"model": "Xeon"})) == (tol, "same runtime")
    assert tolerance_for(tol, ref, arm) == (tol.across, "across runtimes")
    assert tolerance_for(tol, ref, older) == (tol.across, "across runtimes")
    assert tolerance_for(tol, None, host) == (tol.across, "across runtimes")     # a bundle that does not say
    e = np.full((2, 3), 10.0, np.float32)
    assert compare([e * 1.05], [e], [FLOAT], tolerance_for(tol, ref, arm)[0])["self_check"] == "pass"
    assert compare([e * 1.05], [e], [FLOAT], tolerance_for(tol, ref, host)[0])["self_check"] == "fail"
