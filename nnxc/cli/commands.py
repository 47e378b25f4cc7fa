"""The CLI's commands: each takes the parsed arguments and returns an exit code."""
from __future__ import annotations

import os
import sys

from ..errors import SpecError
from .models import trace_model
from .stages import Stages

EXIT_FAIL = 1

# -- commands -----------------------------------------------------------------------

IR_FORMATS = {".ir": "text", ".txt": "text", ".json": "json", ".dot": "dot", ".gv": "dot",
              ".html": "html", ".htm": "html"}


def cmd_ir(args) -> int:
    from .._files import atomic_write
    from ..ir import verify
    fmt = args.format or IR_FORMATS.get(os.path.splitext(args.output or "")[1].lower(), "text")
    if args.diff and fmt not in ("text", "html"):
        raise SpecError(f"--diff writes text or html, not {fmt}")
    pipeline = _pipeline(args.passes or "default") if (args.passes or args.diff) else None
    stages = Stages(args.quiet)
    graph = trace_model(args, stages)
    with stages.stage("verify"):
        verify(graph)
    steps = None
    if args.diff:
        from ..runtime.passdiff import format_steps, step_passes
        with stages.stage("passes", args.passes or "default"):
            steps = step_passes(graph, pipeline, progress=stages.progress)
        graph = steps[-1].after if steps else graph
    elif pipeline is not None:
        from ..passes import optimize
        with stages.stage("passes", args.passes):
            graph = optimize(graph, pipeline)
    if args.summary:
        from ..runtime.summary import format_module_table, module_table
        print(format_module_table(module_table(graph, depth=args.depth)))
        return 0
    with stages.stage("render", fmt):
        if steps is not None:
            from ..ir.view.diff_html import to_diff_html
            text = to_diff_html(steps, graph.name) if fmt == "html" else format_steps(steps) + "\n"
        elif fmt == "json":
            from ..ir.jsonio import to_json
            text = to_json(graph)
        elif fmt == "dot":
            from ..ir.view import to_dot
            text = to_dot(graph, locs=not args.no_locs)
        elif fmt == "html":
            from ..ir.view import to_html
            text = to_html(graph)
        else:
            text = graph.text(locs=not args.no_locs)
    if args.output:
        atomic_write(args.output, text)
        if not args.quiet:
            print(f"wrote {args.output} ({fmt}, {sum(1 for _ in graph.walk())} nodes)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _pipeline(text: str):
    """``default`` (a preset) or ``simplify,dce`` (pass names) -> what nnxc.optimize takes."""
    from ..passes import PASSES, PRESETS
    if text in PRESETS:
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in PASSES]
    if unknown or not names:
        raise SpecError(f"bad --passes {text!r}: use a preset ({', '.join(PRESETS)}) or pass names "
                        f"separated by commas ({', '.join(PASSES)})")
    return names


def cmd_check(args) -> int:
    from ..runtime.check import check_graph, format_table
    stages = Stages(args.quiet)
    graph = trace_model(args, stages)
    rows = check_graph(graph, stages, sizes=_sizes(args.sizes), rtol=args.rtol, atol=args.atol,
                       onnx=not args.no_onnx)
    print(format_table(rows))
    return 0 if all(r["ok"] for r in rows) else EXIT_FAIL


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpecError(f"bad --sizes {text!r}: expected comma-separated integers like 1,3") from None
    if not sizes or min(sizes) < 1:
        raise SpecError(f"bad --sizes {text!r}: sizes must be >= 1")
    return sizes
