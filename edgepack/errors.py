"""The two ways a build ends badly, each with its exit code.

Errors are raised where they are found, naming the file, field or op at fault;
`cli.py` is the only place that turns them into a message and an exit code.
"""
from __future__ import annotations


class EdgepackError(Exception):
    exit_code = 2


class UsageError(EdgepackError):
    """Bad input or usage: exit 2, nothing in the output folder is touched."""

    exit_code = 2


class ConversionError(UsageError):
    """A converter refused the model (an unsupported op, say): exit 2, naming the op."""


class ToolchainMissing(UsageError):
    """A target's or device's toolchain is not installed: exit 2, naming the package."""


class DeviceError(EdgepackError):
    """A device could not be reached or its run failed: that device fails, exit 1."""

    exit_code = 1


class GateFailed(EdgepackError):
    """Built, but a gate (accuracy, latency) failed: exit 1; bundle and report say why."""

    exit_code = 1
