"""Profile < project file < --set, typed validation, the recipe hash."""
from __future__ import annotations

import pytest

from edgepack.config import load_settings, parse_set
from edgepack.errors import UsageError
from edgepack.pipeline import section_models


def settings(**kw):
    return load_settings("tflite-int8", section_models(None), **kw)


def test_profile_defaults_are_typed():
    s = settings()
    assert s.quantize.scheme == "int8" and s.quantize.per_channel is True
    assert s.validate.devices == ("host",)
    assert s.meta["format"] == "tflite"


def test_precedence_profile_then_project_file_then_set(tmp_path):
    proj = tmp_path / "edgepack.toml"
    proj.write_text('[quantize]\nio = "float32"\ncalibration_samples = 64\n[validate]\nruns = 7\n')
    s = settings(project_file=proj, overrides=["validate.runs=9", "quantize.scheme=dynamic"])
    assert s.quantize.io == "float32"              # project file over profile
    assert s.quantize.calibration_samples == 64
    assert s.validate.runs == 9                    # --set over project file
    assert s.quantize.scheme == "dynamic"          # bare word parsed as a string
    assert s.quantize.per_channel is True          # untouched profile value


def test_recipe_hash_follows_settings_not_file_locations():
    a, b = settings(), settings(overrides=["inputs.out='elsewhere'"])
    assert a.recipe_hash == b.recipe_hash
    assert settings(overrides=["quantize.per_channel=false"]).recipe_hash != a.recipe_hash


@pytest.mark.parametrize("override, message", [
    ("quantize.bogus=1", "--set: unknown key quantize.bogus"),
    ("nosection.key=1", "unknown key nosection"),
    ("validate.runs=0", "validate.runs"),
    ("quantize.scheme=int4", "quantize.scheme"),
    ("validate.threads=1.5", "validate.threads"),
])
def test_bad_values_name_the_source_and_key(override, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        settings(overrides=[override])


def test_bad_key_in_project_file_names_the_file(tmp_path):
    proj = tmp_path / "edgepack.toml"
    proj.write_text("[quantize]\nper_chanel = true\n")
    with pytest.raises(UsageError, match=f"{proj}: unknown key quantize.per_chanel"):
        settings(project_file=proj)


def test_invalid_toml_names_the_file(tmp_path):
    proj = tmp_path / "edgepack.toml"
    proj.write_text("[quantize\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        settings(project_file=proj)


@pytest.mark.parametrize("item", ["noequals", "nodot=1", ".key=1"])
def test_set_syntax(item):
    with pytest.raises(UsageError, match="expected section.key=value"):
        parse_set([item])


def test_set_values_are_toml():
    assert parse_set(["a.b=[1, 2]", "a.c=true", "a.d=0.5"]) == {"a": {"b": [1, 2], "c": True, "d": 0.5}}


def test_every_profile_shares_the_compression_and_data_sections():
    """distill, prune and lowrank (and the data split) are target-independent: equal in every
    shipped profile, so that `--target all` runs them once and the other targets hit the cache."""
    import tomllib

    from edgepack.config import PROFILES_DIR

    profiles = {p.stem: tomllib.loads(p.read_text()) for p in sorted(PROFILES_DIR.glob("*.toml"))}
    assert len(profiles) >= 3
    for section in ("data", "distill", "prune", "lowrank"):
        values = {name: prof.get(section) for name, prof in profiles.items()}
        assert len({repr(v) for v in values.values()}) == 1, f"[{section}] differs between profiles: {values}"
