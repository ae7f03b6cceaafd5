"""Device files: one TOML per device under the repository's devices/ folder.

A device file is data, validated here once: an unknown key or a wrong type raises
UsageError naming the file and the key. Which fields a device takes depends on its
transport (local, qemu, ssh); each transport's model forbids the others' keys.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from ..errors import UsageError

# executorch_cpp: the C++ ExecuTorch runner (edgepack/devices/native_runner.py), no Python needed.
RuntimeName = Literal["ai_edge_litert", "tflite_runtime", "openvino", "executorch", "executorch_cpp"]
ALL_RUNTIMES: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "openvino", "executorch", "executorch_cpp")
DEFAULT_QEMU_ROOT = "~/.cache/edgepack/qemu-aarch64"
# The CPU qemu emulates (`qemu-aarch64 -cpu`). Not qemu's "max" (SVE2, SME, i8mm...): under
# qemu 7.2 OpenVINO's ARM kernels take paths there that give wrong answers (measured: 22 %
# top-1 against 100 % on a Cortex-A72, A76 or Neoverse-N1 on the same 60 digits). A Cortex-A76
# is the core of a Raspberry Pi 5: NEON, dot product, fp16.
DEFAULT_QEMU_CPU = "cortex-a76"


def devices_dir() -> Path:
    """The folder of device files: $EDGEPACK_DEVICES_DIR, else the repository's devices/."""
    env = os.environ.get("EDGEPACK_DEVICES_DIR")
    if env:
        return Path(env).expanduser()
    import edgepack

    return Path(edgepack.__file__).resolve().parent.parent / "devices"


class DeviceConfig(BaseModel):
    """What every device file says. Subclassed once per transport."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    transport: str
    arch: str = ""                      # what the device should report ("x86_64", "aarch64"): informative
    description: str = ""
    threads: int = Field(1, ge=1)       # default thread count when the caller passes none
    # Runtimes the device has, in order of preference; the runner takes the first one that
    # loads the model's format (ai_edge_litert or tflite_runtime for .tflite).
    runtimes: tuple[RuntimeName, ...] = ALL_RUNTIMES
    python: str | None = None           # interpreter on the device; None: the transport's default
    # Wall-clock limit of one runner process (load, every evaluation input, warm-up, timed runs).
    run_timeout_s: float = Field(900.0, gt=0)
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The device file this came from (None when built in code)."""
        return self._source


class LocalDevice(DeviceConfig):
    transport: Literal["local"]


class QemuDevice(DeviceConfig):
    transport: Literal["qemu"]
    arch: str = "aarch64"
    runtimes: tuple[RuntimeName, ...] = ("tflite_runtime", "openvino", "executorch_cpp")
    root: str | None = None             # emulator root; None: $EDGEPACK_QEMU_ROOT or DEFAULT_QEMU_ROOT
    cpu: Literal["cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "a64fx", "max"] = \
        DEFAULT_QEMU_CPU

    def root_path(self) -> Path:
        """$EDGEPACK_QEMU_ROOT wins (CI and tests point every run at one cache), then `root`."""
        return Path(os.environ.get("EDGEPACK_QEMU_ROOT") or self.root or DEFAULT_QEMU_ROOT).expanduser()


class SshDevice(DeviceConfig):
    transport: Literal["ssh"]
    runtimes: tuple[RuntimeName, ...] = ("tflite_runtime",)
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    remote_dir: str = "/tmp/edgepack"
    connect_timeout_s: float = Field(10.0, gt=0)


_ADAPTER = TypeAdapter(Annotated[Union[LocalDevice, QemuDevice, SshDevice], Field(discriminator="transport")])


def parse_device(data: dict, source: Path) -> DeviceConfig:
    """Validate one device file's table; UsageError names the file and the key."""
    data = {"name": source.stem, **data}
    try:
        device = _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise UsageError(f"{source}: {_describe(e)}") from None
    if device.name != source.stem:
        raise UsageError(f"{source}: name = {device.name!r} must match the file name ({source.stem!r})")
    device._source = source
    return device


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    kind, loc = err["type"], list(err["loc"])
    if kind == "union_tag_invalid" or (kind == "union_tag_not_found"):
        return "key 'transport': must be one of 'local', 'qemu', 'ssh'"
    if loc and loc[0] in ("local", "qemu", "ssh"):
        loc = loc[1:]                     # drop the union's tag
    key = ".".join(str(part) for part in loc) or "?"
    if kind == "extra_forbidden":
        return f"unknown key {key!r}"
    if kind == "missing":
        return f"missing key {key!r}"
    return f"key {key!r}: {err['msg']}"


def read_device_file(path: Path) -> DeviceConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read device file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    return parse_device(data, path)


def device_files() -> list[Path]:
    folder = devices_dir()
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []
