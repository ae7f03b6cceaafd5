"""The stage cache: its keys hold everything that changes a stage's output (the teacher as
it is, the toolchain's versions, the opset and reference that a stage reads besides its
input), device measurements are taken afresh on every build, and a damaged entry is
rebuilt with a line that says so."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack import pipeline
from edgepack.artifacts import Artifact, sha256_file
from edgepack.build import BuildRequest, prepare
from edgepack.cli import main
from edgepack.stages import base as stages_base
from edgepack.stages.base import REGISTRY, StageResult, all_stages

FAST = ["--set", "distill.enabled=false", "--set", "prune.enabled=false", "--set", "lowrank.enabled=false",
        "--set", "validate.runs=5", "--set", "validate.warmup_runs=1", "--set", "quantize.calibration_samples=16"]
CACHE = ".edgepack-cache"


def build_args(model: str, out: Path, *extra: str, weights: Path | None = None, data: Path) -> list[str]:
    return ["build", "-t", "tflite-int8", "--model", model, *(["--weights", str(weights)] if weights else []),
            "--data", str(data), "--out", str(out), *FAST, *extra]


def build(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res.output


def build_in_new_process(*args: str) -> str:
    """A fresh interpreter: the model file and what it imports are read anew, as a user's next build does."""
    res = subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, timeout=900,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def statuses(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("done", "cached", "skipped"):
            out[parts[1]] = parts[0]
    return out


def bundle(out: Path, name: str) -> Path:
    return out / f"{name}-tflite-int8"


@pytest.fixture(scope="module")
def first_build(tiny, tmp_path_factory):
    """One tiny build; tests rebuild from copies of its output folder."""
    out = tmp_path_factory.mktemp("cache") / "out"
    build(*build_args(f"{tiny['model']}:make_model", out, weights=tiny["weights"], data=tiny["data"]))
    return out


@pytest.fixture
def out(first_build, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(first_build, copy)
    return copy


def rebuild(tiny, out: Path, *extra: str) -> str:
    return build(*build_args(f"{tiny['model']}:make_model", out, *extra, weights=tiny["weights"], data=tiny["data"]))


# -- 1. the teacher is keyed on what it is ---------------------------------------------------
def test_a_factory_that_loads_its_own_checkpoint_is_keyed_on_the_weights(tiny, tmp_path):
    import torch
    from tests.conftest import TINY_MODEL

    model_py = tmp_path / "own_ckpt.py"
    model_py.write_text(TINY_MODEL + textwrap.dedent('''
        from pathlib import Path

        def make_loaded():
            model = Tiny()
            model.load_state_dict(torch.load(Path(__file__).with_name("side.pt"), weights_only=True))
            return model
    '''))
    state = torch.load(tiny["weights"], weights_only=True)
    torch.save(state, tmp_path / "side.pt")
    out = tmp_path / "out"
    args = build_args(f"{model_py}:make_loaded", out, data=tiny["data"])
    build(*args)
    first_model = sha256_file(bundle(out, "own_ckpt") / "model.tflite")

    state["fc.weight"] = -state["fc.weight"]          # another checkpoint, the same factory file
    torch.save(state, tmp_path / "side.pt")
    st = statuses(build(*args))
    assert st["reference"] == "done" and st["export"] == "done" and st["quantize"] == "done", st
    assert sha256_file(bundle(out, "own_ckpt") / "model.tflite") != first_model


def test_a_factory_whose_architecture_lives_in_a_sibling_module_is_keyed_on_it(tiny, tmp_path):
    arch = tmp_path / "tiny_arch.py"
    arch_src = textwrap.dedent('''
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, WIDTH, 3, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.fc = nn.Linear(WIDTH, 4)

            def forward(self, x):
                return self.fc(self.body(x))
    ''')
    arch.write_text("WIDTH = 8\n" + arch_src)
    (tmp_path / "factory.py").write_text(textwrap.dedent('''
        import sys
        from pathlib import Path

        import torch

        sys.path.insert(0, str(Path(__file__).parent))
        from tiny_arch import Net

        def make():
            torch.manual_seed(0)
            return Net()
    '''))
    out = tmp_path / "out"
    args = build_args(f"{tmp_path / 'factory.py'}:make", out, data=tiny["data"])
    build_in_new_process(*args)
    first_model = sha256_file(bundle(out, "factory") / "model.tflite")

    arch.write_text("WIDTH = 12\n" + arch_src)     # the factory file itself is unchanged
    st = statuses(build_in_new_process(*args))
    assert st["reference"] == "done" and st["export"] == "done" and st["quantize"] == "done", st
    assert sha256_file(bundle(out, "factory") / "model.tflite") != first_model
    report = json.loads((bundle(out, "factory") / "report.json").read_text())
    assert report["stages"][0]["params"] == 12 * 9 + 12 + 12 * 4 + 4


def test_the_teacher_identity_is_stable_and_follows_the_model(tiny):
    from edgepack.inputs.model import load_model

    a = load_model(f"{tiny['model']}:make_model", tiny["weights"])
    b = load_model(f"{tiny['model']}:make_model", tiny["weights"])
    assert a.sha256 == b.sha256
    other = load_model(f"{tiny['model']}:make_other")
    assert other.sha256 != a.sha256
    # no --weights: a randomly initialised model, the same one on every load
    assert load_model(f"{tiny['model']}:make_model").sha256 == load_model(f"{tiny['model']}:make_model").sha256


# -- 2. toolchain versions -------------------------------------------------------------------
def test_a_new_converter_version_reruns_the_stages_that_use_it(tiny, out, monkeypatch):
    real = stages_base.package_version
    monkeypatch.setattr(stages_base, "package_version",
                        lambda m: "99.0" if m == "onnx2tf" else real(m))
    st = statuses(rebuild(tiny, out))
    assert {k: st[k] for k in ("reference", "export", "quantize", "validate")} == dict.fromkeys(
        ("reference", "export", "quantize", "validate"), "done"), st


def key_context(tiny, *overrides: str):
    req = BuildRequest(target="tflite-int8", model=f"{tiny['model']}:make_model", weights=str(tiny["weights"]),
                       data=str(tiny["data"]), overrides=tuple(o for o in FAST[1::2]) + overrides)
    return prepare(req, log=lambda _: None).ctx


def keys(ctx) -> dict[str, str]:
    art = Artifact(kind="torch", path=Path("model.pt"), sha256="0" * 64)
    return {cls.name: pipeline.stage_key(cls(), ctx.settings[cls.section], ctx, art) for cls in all_stages()}


def test_a_new_torch_version_changes_every_stage_key(tiny, monkeypatch):
    ctx = key_context(tiny)
    before = keys(ctx)
    real = stages_base.package_version
    monkeypatch.setattr(stages_base, "package_version", lambda m: "3.0" if m == "torch" else real(m))
    after = keys(ctx)
    assert all(before[k] != after[k] for k in before), (before, after)


def test_toolchain_versions_are_read_without_importing_the_toolchain():
    code = ("import sys; from edgepack.stages.base import package_versions; "
            "v = package_versions(('torch', 'onnx2tf', 'no_such_module_xyz')); "
            "assert v['no_such_module_xyz'] == 'absent' and v['torch'] != 'absent', v; "
            "assert 'torch' not in sys.modules and 'onnx2tf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- 3. what reference and validate read besides their input ------------------------------------
def test_the_reference_key_holds_the_export_opset(tiny):
    a = keys(key_context(tiny, "export.opset=17"))
    b = keys(key_context(tiny, "export.opset=18"))
    assert a["reference"] != b["reference"]
    assert a["quantize"] == b["quantize"]        # quantize reads its input only


def test_the_validate_key_holds_the_reference_artifacts(tiny, tmp_path):
    ctx = key_context(tiny)
    teacher = Artifact(kind="torch", path=tmp_path / "t.pt", sha256="1" * 64)

    def with_reference(sha: str) -> str:
        ctx.results["reference"] = StageResult(teacher, {"accuracy": 90.0}, {
            "teacher_outputs": Artifact(kind="npy", path=tmp_path / "o.npy", sha256="2" * 64),
            "reference": Artifact(kind="tflite", path=tmp_path / "r.tflite", sha256=sha)})
        return keys(ctx)["validate"]

    assert with_reference("3" * 64) != with_reference("4" * 64)


def test_the_quantize_key_holds_recovery_settings_and_what_recovery_reads(tiny):
    """The budget picks the recovery step, and QAT distils with the distill section's loss."""
    base = keys(key_context(tiny))
    for change in ('quantize.recovery=["ptq", "mixed"]', "quantize.max_float_layers=2",
                   "quantize.weights_block_size=64", "quantize.sensitivity_samples=8", "quantize.qat_epochs=1",
                   "validate.max_accuracy_drop_pp=2.0", "distill.temperature=2.0"):
        changed = keys(key_context(tiny, change))
        assert base["quantize"] != changed["quantize"], change
        assert base["export"] == changed["export"], change


# -- 4. device measurements are never cached -----------------------------------------------------
def test_a_rebuild_serves_every_stage_but_validate_from_the_cache(tiny, out):
    before = json.loads((bundle(out, "tiny_net") / "report.json").read_text())
    st = statuses(rebuild(tiny, out))
    assert st.pop("validate") == "done"
    assert set(st.values()) == {"cached", "skipped"}, st
    after = json.loads((bundle(out, "tiny_net") / "report.json").read_text())
    host = [next(d for d in r["devices"] if d["name"] == "host") for r in (before, after)]
    assert len(host[1]["samples_ms"]) == 5 and host[0]["samples_ms"] != host[1]["samples_ms"]
    assert not REGISTRY["validate"].cacheable


# -- 5. damaged entries --------------------------------------------------------------------------
def entry(out: Path, stage: str) -> Path:
    (folder,) = [p for p in (out / CACHE / stage).iterdir() if not p.name.startswith(".")]
    return folder


def test_damaged_entries_are_discarded_and_rebuilt(tiny, out):
    quantize = entry(out, "quantize")
    model = quantize / json.loads((quantize / "result.json").read_text())["artifact"]["path"]
    model.write_bytes(model.read_bytes()[:100])                       # a truncated artifact
    export = entry(out, "export")
    doc = json.loads((export / "result.json").read_text())
    doc["metrics"]["params"] = 1                                      # still JSON, no longer what was written
    (export / "result.json").write_text(json.dumps(doc))
    reference = entry(out, "reference")
    (reference / "result.json").unlink()                              # a half-removed entry

    output = rebuild(tiny, out)
    for stage, folder, why in [("quantize", quantize, f"{model.name} does not match its checksum"),
                               ("export", export, "result.json does not match its checksum"),
                               ("reference", reference, "no readable result.json")]:
        assert f"cache entry {stage}/{folder.name} was damaged ({why}): rebuilt" in output.splitlines(), output
    st = statuses(output)
    assert st["reference"] == "done" and st["export"] == "done" and st["quantize"] == "done", st
    report = json.loads((bundle(out, "tiny_net") / "report.json").read_text())
    assert next(s for s in report["stages"] if s["name"] == "export")["params"] > 1
    assert sha256_file(bundle(out, "tiny_net") / "model.tflite") == sha256_file(model)


def test_a_damaged_teacher_copy_is_saved_again(tiny, out):
    (saved,) = (out / CACHE / "input").glob("*/model.pt")
    saved.write_bytes(saved.read_bytes()[:64])
    output = rebuild(tiny, out)
    why = "model.pt does not match its checksum"
    assert f"cache entry input/{saved.parent.name} was damaged ({why}): rebuilt" in output
    assert sha256_file(saved) == saved.with_name("model.pt.sha256").read_text().strip()
