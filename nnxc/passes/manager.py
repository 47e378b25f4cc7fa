"""The pass manager: run a pipeline, verify after each pass, dump, time, name the failing pass."""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from .._gc import gc_paused
from ..errors import NnxcError, VerifyError
from ..ir.graph import Graph
from . import report
from ..ir.verify import verify as verify_ir
from .report import PassError, PassStat, Stats
from .rewrite import Rebuild


def resolve(pipeline, freeze=None, prune=None) -> list[tuple[str, object]]:
    """(name, function) per pass: ``pipeline`` is a preset name or a list of names/functions.

    A ``freeze`` / ``prune`` filter replaces the filter of the pipeline's pass of that name,
    or runs first when the pipeline has none."""
    from . import PASSES, PRESETS, freeze as freeze_pass, prune as prune_pass
    if isinstance(pipeline, str):
        if pipeline not in PRESETS:
            raise NnxcError(f"unknown pipeline {pipeline!r}: use one of {', '.join(PRESETS)} or a list of passes")
        pipeline = PRESETS[pipeline]
    items, custom = list(pipeline), {}
    for key, fn, flt in (("prune", prune_pass, prune), ("freeze", freeze_pass, freeze)):
        if flt is not None:
            custom[key] = functools.partial(fn, filter=flt)
            if key not in items:
                items.insert(0, key)
    out = []
    for p in items:
        if isinstance(p, str):
            if p not in PASSES:
                raise NnxcError(f"unknown pass {p!r}; known passes: {', '.join(PASSES)}")
            out.append((p, custom.get(p) or PASSES[p][0]))
        elif callable(p):
            out.append((getattr(p, "pass_name", None) or getattr(p, "__name__", repr(p)), p))
        else:
            raise NnxcError(f"a pipeline holds pass names or functions, got {p!r}")
    return out


def count_nodes(graph: Graph) -> int:
    return sum(1 for _ in graph.walk())


def optimize(graph: Graph, pipeline="default", freeze=None, prune=None, verify: bool = True,
             dump_dir=None, stats: bool = False):
    """Run ``pipeline`` on ``graph`` and return a new graph (``graph`` is left untouched).

    ``freeze`` / ``prune`` take NNX Filters. With ``stats=True`` returns ``(graph, Stats)``.
    ``dump_dir``: IR text before the first pass and after each pass that changed something.
    Environment: ``NNXC_VERIFY=0|1`` overrides ``verify``; ``NNXC_PRINT_AFTER=all|changed|
    name,name`` prints the IR after those passes to stderr.
    """
    passes = resolve(pipeline, freeze, prune)
    verify = os.environ.get("NNXC_VERIFY", "1" if verify else "0").lower() not in ("0", "false", "")
    show = os.environ.get("NNXC_PRINT_AFTER", "")
    dump = None if dump_dir is None else Path(dump_dir)
    if dump is not None:
        _write(dump / "00-input.ir", graph)
    if verify:
        try:
            verify_ir(graph)
        except VerifyError as e:
            raise PassError(f"the input graph is invalid (before any pass): {e}") from e
    record, done, g = Stats(), [], graph
    changed = list(graph.meta.get("changed_passes", ()))  # earlier optimize calls count too
    with gc_paused():
        for i, (name, fn) in enumerate(passes, 1):
            before = g
            g = _one(i, name, fn, g, verify, show, dump, record, done)
            if g is not before:
                changed.append(name)
    if g is graph:  # nothing changed: the caller still gets a graph of its own
        g = Rebuild(graph).run()
    g.meta["passes"] = tuple(done)
    g.meta["changed_passes"] = tuple(changed)
    # what the pipeline started from, so a check can name the pass that changed results
    source, before = graph.meta.get("source", (graph, ()))
    g.meta["source"] = (source, tuple(before) + tuple(passes))
    return (g, record) if stats else g


def _one(i, name, fn, g, verify, show, dump, record, done) -> Graph:
    before, t0 = count_nodes(g), time.perf_counter()
    report._FIRED.append({})
    try:
        out = fn(g)
    except Exception as e:
        raise PassError(_blame(name, done, f"raised {type(e).__name__}: {e}")) from e
    finally:
        fired = report._FIRED.pop()
    seconds, changed = time.perf_counter() - t0, out is not g
    if verify and changed:
        try:
            verify_ir(out)
        except VerifyError as e:
            if dump is not None:
                _write(dump / f"{i:02d}-{name}.invalid.ir", out)
            raise PassError(_blame(name, done, f"produced invalid IR: {e}")) from e
    record.append(PassStat(name, seconds, before, count_nodes(out), changed, fired))
    if changed and dump is not None:
        _write(dump / f"{i:02d}-{name}.ir", out)
    if show == "all" or (show == "changed" and changed) or name in show.split(","):
        print(f"// ----- IR after {name} ----- //\n{out}", file=sys.stderr)
    done.append(name)
    return out


def _blame(name: str, done: list, what: str) -> str:
    after = f" (after {', '.join(done)})" if done else " (the first pass)"
    return f"pass {name!r}{after} {what}"


def _write(path: Path, graph: Graph) -> None:
    from .._files import atomic_write
    try:
        text = str(graph)
    except Exception as e:  # noqa: BLE001 - a broken graph may not print; say so in the dump
        text = f"// the graph could not be printed: {type(e).__name__}: {e}\n"
    atomic_write(path, text)
