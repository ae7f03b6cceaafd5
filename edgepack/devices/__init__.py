"""The device harness: device files, transports (local, qemu, ssh) and the runner.

`runner.py` is copied to devices and runs there alone: it imports nothing of edgepack.
"""
from .config import DeviceConfig, LocalDevice, QemuDevice, SshDevice, devices_dir
from .registry import DeviceRun, list_devices, load_device, run_on_device
from .transport import Transport

__all__ = ["DeviceConfig", "DeviceRun", "LocalDevice", "QemuDevice", "SshDevice", "Transport", "devices_dir",
           "list_devices", "load_device", "run_on_device"]
