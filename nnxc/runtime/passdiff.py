"""Run a pass pipeline one pass at a time and record what each pass changed (``nnxc ir --diff``)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..ir.changes import GraphDiff, diff
from ..ir.graph import Graph


@dataclass
class PassStep:
    name: str
    before: Graph
    after: Graph  # the same object as ``before`` when the pass changed nothing
    seconds: float
    fired: dict
    diff: GraphDiff


def step_passes(graph: Graph, pipeline="default", freeze=None, prune=None, progress=None) -> list[PassStep]:
    """``nnxc.optimize`` one pass at a time (each verified), with the graph before and after each."""
    from ..passes import PRESETS, optimize
    items = list(PRESETS[pipeline] if isinstance(pipeline, str) and pipeline in PRESETS else
                 ([pipeline] if isinstance(pipeline, str) else pipeline))
    filters = {"freeze": freeze, "prune": prune}
    for key in ("prune", "freeze"):  # as optimize does: an explicit filter runs first if not named
        if filters[key] is not None and key not in items:
            items.insert(0, key)
    steps, g = [], graph
    with _task(progress, len(items)) as advance:
        for item in items:
            name = item if isinstance(item, str) else getattr(item, "pass_name", getattr(item, "__name__", "pass"))
            advance(0, description=f"pass {name}")
            kw = {name: filters[name]} if name in filters and filters[name] is not None else {}
            t0 = time.perf_counter()
            out, stats = optimize(g, [item], stats=True, **kw)
            seconds = time.perf_counter() - t0
            after = out if stats[0].changed else g
            steps.append(PassStep(name, g, after, seconds, dict(stats[0].fired), diff(g, after)))
            g = after
            advance(1)
    return steps


def _task(progress, total: int):
    from contextlib import nullcontext
    return progress.task("passes", total=total) if progress is not None else nullcontext(lambda *a, **k: None)


def format_steps(steps: list[PassStep]) -> str:
    """The text report of ``--diff``: one block per pass, changes by module."""
    lines = []
    for i, s in enumerate(steps, 1):
        head = f"{i:>2}. {s.name:<22} {s.seconds * 1e3:8.1f} ms  "
        if not s.diff.changed:
            lines.append(head + "no change")
            continue
        fired = ", ".join(f"{k}={v}" for k, v in s.fired.items())
        lines.append(head + s.diff.summary() + (f"  [{fired}]" if fired else ""))
        lines.extend("      " + x for x in s.diff.lines())
    if steps:
        lines.append(f"total: {_count(steps[0].before)} -> {_count(steps[-1].after)} nodes "
                     f"in {sum(s.seconds for s in steps) * 1e3:.1f} ms")
    return "\n".join(lines)


def _count(g: Graph) -> int:
    return sum(1 for _ in g.walk())
