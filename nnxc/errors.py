"""Errors a user can act on. Each names what is wrong and where."""
from __future__ import annotations


class NnxcError(Exception):
    """Base class of nnxc's user-facing errors (the CLI prints them without a traceback)."""


class UnsupportedOpError(NnxcError):
    """One or more primitives/ops cannot be handled; lists all of them at once.

    ``items`` is a list of ``(op, module_path, source_loc, reason)``.
    """

    def __init__(self, items, stage: str = "trace"):
        self.items = list(items)
        self.stage = stage
        lines = [f"{len(self.items)} unsupported op(s) during {stage}:"]
        for op, path, loc, why in self.items:
            where = f" in module '{path}'" if path else " at top level"
            lines.append(f"  - {op}{where} at {loc or '<unknown source>'}: {why}")
        super().__init__("\n".join(lines))


class SpecError(NnxcError, ValueError):
    """A malformed input spec (``x:f32[B,784]``) or model spec (``file.py:factory``)."""


class VerifyError(NnxcError):
    """The IR is malformed; the message shows the offending node."""


class NnxcWarning(UserWarning):
    """Base class of nnxc's warnings (something works, but not quite as the user may expect)."""
