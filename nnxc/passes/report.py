"""What passes report: the error naming a failing pass, per-pass statistics, rewrite counts."""
from __future__ import annotations

import dataclasses

from ..errors import NnxcError


class PassError(NnxcError):
    """A pass raised or produced invalid IR; names it and the passes that ran before it."""


@dataclasses.dataclass
class PassStat:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    fired: dict  # what the pass rewrote, e.g. {"layer_norm": 5, "linear": 12}


class Stats(list):
    """The PassStats of one ``optimize`` run; prints as a table."""

    def __str__(self) -> str:
        rows = [f"{'pass':<22} {'ms':>8} {'nodes':>13}  fired"]
        for s in self:
            what = ", ".join(f"{k}={v}" for k, v in s.fired.items()) or ("changed" if s.changed else "-")
            rows.append(f"{s.name:<22} {s.seconds * 1e3:8.1f} {s.nodes_before:>6}->{s.nodes_after:<6}  {what}")
        rows.append(f"{'total':<22} {sum(s.seconds for s in self) * 1e3:8.1f}")
        return "\n".join(rows)

    def fired(self) -> dict:
        total: dict = {}
        for s in self:
            for k, v in s.fired.items():
                total[k] = total.get(k, 0) + v
        return total


_FIRED: list[dict] = []  # one counter per running pass


def fired(what: str, n: int = 1) -> None:
    """Count a rewrite (``fired("layer_norm")``) for the pass manager's statistics."""
    if _FIRED and n:
        _FIRED[-1][what] = _FIRED[-1].get(what, 0) + n
