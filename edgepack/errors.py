"""The ways a build ends badly, each with its exit code.

Errors are raised where they are found, naming the file, field or op at fault;
`cli.py` is the only place that turns them into a message and an exit code. A gate
that fails (accuracy, latency) is not an exception: the build goes on to write the
bundle and report, which say why, and the exit code is 1.

Exit codes: 0 done; 1 a gate failed, or a device or registry could not be reached;
2 bad input or usage, or a bundle refused (a changed file, a missing or foreign
signature, a registry entry that would land outside --out, credentials refused);
3 internal error.
"""
from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager


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


class RegistryUnreachable(EdgepackError):
    """A registry that could not be reached (down, refused, TLS handshake failed) or that
    failed on its side (5xx): exit 1, like a device; nothing is written."""

    exit_code = 1


class InternalError(EdgepackError):
    """Anything else that went wrong (a bug, or a library failing in a way nobody foresaw):
    exit 3. Names the stage that was running and the target; the traceback goes to a log
    file, so that it never reads as "a gate failed" (1) or "bad input" (2)."""

    exit_code = 3

    def __init__(self, stage: str, target: str, cause: BaseException):
        self.stage, self.target, self.cause = stage, target, cause
        first = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(f"internal error in stage {stage} for target {target}: "
                         f"{type(cause).__name__}{': ' + first if first else ''}")

    def traceback_text(self) -> str:
        return "".join(traceback.format_exception(type(self.cause), self.cause, self.cause.__traceback__))


@contextmanager
def stage_errors(stage: str, target: str) -> Iterator[None]:
    """Let EdgepackError (and KeyboardInterrupt) through; turn any other exception into
    InternalError naming the stage that was running and the target."""
    try:
        yield
    except EdgepackError:
        raise
    except Exception as e:
        raise InternalError(stage, target, e) from e


def error_line(e: EdgepackError, out) -> str:
    """The one line for an error; an internal error's traceback goes to a log in `out`
    (edgepack-error-<target>.log), which the line names."""
    if not isinstance(e, InternalError):
        return str(e)
    from pathlib import Path

    from .artifacts import atomic_write_text

    log = Path(out) / f"edgepack-error-{e.target}.log"
    try:
        atomic_write_text(log, e.traceback_text())
    except OSError as w:
        return f"{e} (the traceback could not be written to {log}: {w})"
    return f"{e} (traceback in {log})"
