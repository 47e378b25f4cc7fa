"""The CLI's commands: each takes the parsed arguments and returns an exit code."""
from __future__ import annotations

import os
import sys

from ..errors import NnxcError, SpecError
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
    stages = Stages(args.quiet)
    graph = trace_model(args, stages)
    with stages.stage("verify"):
        verify(graph)
    steps = None
    if args.diff:
        from ..runtime.passdiff import format_steps, step_passes
        pipeline = _pipeline(args.passes or "default")
        with stages.stage("passes", args.passes or "default"):
            steps = step_passes(graph, pipeline, freeze=_filter(args.freeze), prune=_filter(args.prune),
                                progress=stages.progress)
        graph = steps[-1].after if steps else graph
    else:
        graph = optimize_graph(args, graph, stages, dump_dir=args.dump_after_each)
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
            text = graph.text(locs=not args.no_locs, full_constants=args.full_constants)
    if args.output and fmt == "text" and steps is None:
        _write_ir(args, args.output, graph, locs=not args.no_locs)
    elif args.output:
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


def _filter(text: str | None):
    if text is None:
        return None
    from ..passes import parse_filter
    try:
        return parse_filter(text)
    except NnxcError as e:
        raise SpecError(f"bad filter {text!r}: {e}") from None


def optimize_graph(args, graph, stages, dump_dir=None):
    """Run ``-O/--passes`` (with ``--freeze``/``--prune``) if given; print ``--stats``."""
    freeze, prune = _filter(args.freeze), _filter(args.prune)
    if args.passes is None and freeze is None and prune is None:
        return graph
    from ..passes import optimize
    pipeline = _pipeline(args.passes or "default")
    with stages.stage("optimize", args.passes or "default"):
        result = optimize(graph, pipeline, freeze=freeze, prune=prune, dump_dir=dump_dir,
                          stats=args.stats)
    if args.stats:
        result, stats = result
        print(stats, file=sys.stderr)
    return result


def _write_ir(args, path: str, graph, locs: bool = True) -> None:
    """IR text to ``path`` with the constants the user asked for (and a sidecar)."""
    from ..ir.printer import write_text
    write_text(graph, path, locs=locs, full_constants=args.full_constants, sidecar=args.sidecar or None)


def cmd_check(args) -> int:
    stages = Stages(args.quiet)
    graph = optimize_graph(args, trace_model(args, stages), stages)
    report = _crosscheck(graph, stages, args, ("jax", "xla") if args.no_onnx else ("jax", "xla", "onnx"))
    print(report)
    return 0 if report.ok else EXIT_FAIL


def _crosscheck(graph, stages, args, backends, opset=None):
    from ..runtime.crosscheck import crosscheck
    what = {"jax": "the model's jax.jit", "xla": "XLA compile", "onnx": "onnxruntime"}
    with stages.stage("check", ", ".join(what[b] for b in backends)):
        report = crosscheck(graph, backends=backends, rtol=args.rtol, atol=args.atol,
                            sizes=_sizes(args.sizes), opset=opset)
    return report


def cmd_export(args) -> int:
    from .._files import atomic_write
    from ..backends.onnx import export_onnx
    stages = Stages(args.quiet)
    graph = trace_model(args, stages)
    if args.dump_ir:
        with stages.stage("dump IR", args.dump_ir):
            _write_ir(args, args.dump_ir, graph)
    optimized = optimize_graph(args, graph, stages)
    if args.dump_ir and optimized is not graph:
        stem, ext = os.path.splitext(args.dump_ir)
        after = f"{stem}.{args.passes or 'default'}{ext or '.ir'}"
        with stages.stage("dump IR", after):
            _write_ir(args, after, optimized)
    graph = optimized
    with stages.stage("lower", f"ONNX -> {args.output}"):
        model = export_onnx(graph, args.output, opset=args.opset,
                            external_data=True if args.external_data else None,
                            weights_as_inputs=args.weights_as_inputs)
    if not args.quiet:
        print(f"wrote {args.output}: {len(model.graph.node)} ONNX nodes, opset "
              f"{model.opset_import[0].version}", file=sys.stderr)
    if not args.check:
        return 0
    report = _crosscheck(graph, stages, args, ("jax", "xla", "onnx"), opset=args.opset)
    print(report)
    return 0 if report.ok else EXIT_FAIL


def cmd_compile(args) -> int:
    import json

    from .._files import atomic_write
    from ..backends.xla.compile import compile as xla_compile
    from ..backends.xla.compile import parse_mesh
    from ..runtime.artifact import save
    from ..runtime.summary import format_module_table, module_table
    platforms = tuple(p.strip() for p in args.platform.split(",") if p.strip())
    mesh = parse_mesh(args.mesh) if args.mesh else None
    stages = Stages(args.quiet)
    traced = trace_model(args, stages)
    dump = args.dump_dir
    graph = optimize_graph(args, traced, stages, dump_dir=os.path.join(dump, "passes") if dump else None)
    with stages.stage("compile", "XLA" + (f" on mesh {args.mesh}" if mesh else "")):
        exe = xla_compile(graph, mesh=mesh)
    with stages.stage("save", f"{','.join(platforms)} -> {args.output}"):
        save(exe, args.output, platforms=platforms)
    rows = module_table(graph)
    if dump:
        with stages.stage("dump", dump):
            _write_ir(args, os.path.join(dump, "ir.before.ir"), traced)
            _write_ir(args, os.path.join(dump, "ir.after.ir"), graph)
            atomic_write(os.path.join(dump, "stablehlo.mlir"), exe.as_text("stablehlo"))
            atomic_write(os.path.join(dump, "hlo.txt"), exe.as_text("hlo"))
            cost = {k: v for k, v in exe.cost_analysis().items() if "{" not in k}  # totals only
            report = {"cost_analysis": cost, "memory_analysis": exe.memory_analysis(),
                      "modules": rows}
            atomic_write(os.path.join(dump, "report.json"), json.dumps(report, indent=2, default=str))
    print(format_module_table(rows))
    return 0


def cmd_run(args) -> int:
    import statistics

    import jax
    import numpy as np

    from ..runtime.artifact import load
    from ..runtime.bench import timings
    if not os.path.isfile(args.artifact):
        raise SpecError(f"artifact not found: {args.artifact}")
    stages = Stages(args.quiet)
    with stages.stage("load", args.artifact):
        art = load(args.artifact)
    specs = art.manifest["inputs"]
    if args.random:
        inputs = _random_inputs(specs, _dims(args.dims))
    else:
        inputs = _file_inputs(specs, args.inputs)
    with stages.stage("run", "first call (compiles for these shapes)"):
        out = jax.block_until_ready(art(*inputs))
    times = timings(lambda: jax.block_until_ready(art.apply(art.state, *inputs)), max(args.repeat, 0))
    leaves = jax.tree_util.tree_flatten_with_path(out)[0]
    for path, x in leaves:
        print(f"{jax.tree_util.keystr(path) or 'out':<24} {str(np.asarray(x).dtype):>8} {tuple(np.shape(x))}")
    if times:
        print(f"latency: median {1e3 * statistics.median(times):.3f} ms over {len(times)} runs")
    if args.output:
        from .._files import atomic_open
        with atomic_open(args.output, "wb") as f:
            np.savez(f, **{(jax.tree_util.keystr(p) or "out").strip(".[]'\"") or "out": np.asarray(x)
                           for p, x in leaves})
    return 0


def _dims(text: str) -> dict:
    out = {}
    for item in (t for t in text.split(",") if t.strip()):
        k, sep, v = item.partition("=")
        if not sep or not k.strip().isidentifier() or not v.strip().isdigit():
            raise SpecError(f"bad --dims {text!r}: expected B=4,T=16")
        out[k.strip()] = int(v)
    return out


def _resolve(shape, dims: dict) -> tuple:
    from ..frontend._jax_compat import eval_dim
    return tuple(d if isinstance(d, int) else int(eval_dim(d, {**dims})) for d in shape)


def _random_inputs(specs, dims: dict) -> list:
    import re

    import numpy as np

    from ..runtime.check import random_array
    rng = np.random.default_rng(0)
    out = []
    for s in specs:
        names = {n for d in s["shape"] if isinstance(d, str) for n in re.findall(r"[A-Za-z_]\w*", d)}
        out.append(random_array(rng, _resolve(s["shape"], {**{n: 1 for n in names}, **dims}), s["dtype"]))
    return out


def _file_inputs(specs, items: list[str]) -> list:
    import numpy as np
    given = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SpecError(f"bad input {item!r}: expected NAME=FILE.npy or NAME=FILE.npz:KEY")
        file, key = path.rsplit(":", 1) if ".npz:" in path else (path, "")
        if not os.path.isfile(file):
            raise SpecError(f"input file not found: {file}")
        try:
            data = np.load(file, allow_pickle=False)
        except ValueError as e:
            raise SpecError(f"cannot read {file}: {e}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            key = key or name
            if key not in data:
                raise SpecError(f"{file} has no array {key!r} (has: {', '.join(data.files)})")
            data = data[key]
        given[name] = data
    names = [s["name"] for s in specs]
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in names]
    if missing or extra:
        raise SpecError(f"inputs: the artifact takes {', '.join(names)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unknown {', '.join(extra)}" if extra else "")
                        + " (or pass --random)")
    return [given[n] for n in names]


def cmd_passes(args) -> int:
    from ..passes import EXACT, PASSES, PRESETS, PROMISES
    width = max(len(n) for n in PASSES)
    print("passes (exact: XLA results stay bit for bit; inexact: may change rounding):")
    for name, (_, doc) in PASSES.items():
        print(f"  {name:<{width}}  {'exact  ' if name in EXACT else 'inexact'}  {doc}")
    print("presets:")
    for name, names in PRESETS.items():
        print(f"  {name:<{width}}  {', '.join(names) or '(nothing)'}")
        print(f"  {'':<{width}}  promise: {PROMISES[name]}")
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpecError(f"bad --sizes {text!r}: expected comma-separated integers like 1,3") from None
    if not sizes or min(sizes) < 1:
        raise SpecError(f"bad --sizes {text!r}: sizes must be >= 1")
    return sizes
