"""The CLI's commands: each takes the parsed arguments and returns an exit code."""
from __future__ import annotations

import os
import sys

from ..errors import NnxcError, SpecError
from .models import fit_dtype, load_array, trace_model
from .stages import Stages
from .distributed import cmd_run_processes, shard_overrides, wants_processes

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
    mesh = _mesh(args.mesh) if args.mesh else None
    graph = trace_model(args, stages, mesh=mesh)
    with stages.stage("verify"):
        verify(graph)
    steps = None
    if args.diff:
        from ..runtime.passdiff import format_steps, step_passes
        pipeline = _pipeline(args.passes or "default")
        with stages.stage("passes", args.passes or "default"):
            steps = step_passes(graph, pipeline, freeze=_filter(args.freeze, graph),
                                prune=_filter(args.prune, graph), progress=stages.progress)
        graph = steps[-1].after if steps else graph
    else:
        graph = optimize_graph(args, graph, stages, dump_dir=args.dump_after_each)
    collectives = _mesh_collectives(graph, mesh, stages) if mesh is not None and (
        args.summary or fmt == "html") else None
    if args.summary:
        from ..ir.summary import format_module_table, module_table
        print(format_module_table(module_table(graph, depth=args.depth)))
        if collectives is not None:
            from ..backends.xla.collectives import format_collectives
            print()
            print(format_collectives(collectives))
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
            text = to_html(graph, collectives=collectives)
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


def _mesh_collectives(graph, mesh, stages) -> list:
    """``nnxc ir --mesh``: compile on the mesh (symbolic dims at the data axis size) and list
    the collectives XLA inserted, for the summary and the HTML view."""
    from ..backends.xla.compile import compile as xla_compile
    symbolic = _symbols(graph)
    n = mesh.shape["data"] if "data" in mesh.axis_names else 1
    _check_static_batch(graph, mesh)
    with stages.stage("compile", "XLA on the mesh, for its collectives"):
        exe = xla_compile(graph, mesh=mesh)
        return exe.collectives(*_dump_structs(graph, {k: n for k in symbolic}, mesh, symbolic))


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


def _filter(text: str | None, graph=None):
    """``--freeze`` / ``--prune`` text -> an NNX filter, checked against ``graph``'s variables
    (an unknown Variable type is an error; a part that selects nothing warns)."""
    if text is None:
        return None
    from ..passes import parse_filter
    try:
        return parse_filter(text, graph)
    except NnxcError as e:
        raise SpecError(f"bad filter {text!r}: {e}") from None


def optimize_graph(args, graph, stages, dump_dir=None):
    """Run ``-O/--passes`` (with ``--freeze``/``--prune``) if given; print ``--stats``."""
    freeze, prune = _filter(args.freeze, graph), _filter(args.prune, graph)
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


def _check_diagnostics(args) -> None:
    """``--per-module`` / ``--repro DIR`` misuse, before any work."""
    if getattr(args, "check", True) is False and (args.per_module or args.repro):
        raise SpecError(f"{'--per-module' if args.per_module else '--repro'} needs --check")
    if args.repro and os.path.exists(args.repro) and not os.path.isdir(args.repro):
        raise SpecError(f"--repro {args.repro}: not a folder")


def cmd_check(args) -> int:
    _check_diagnostics(args)
    stages = Stages(args.quiet)
    graph = optimize_graph(args, trace_model(args, stages), stages)
    report = _crosscheck(graph, stages, args, ("jax", "xla") if args.no_onnx else ("jax", "xla", "onnx"),
                         data=args.input_data)
    print(report)
    return 0 if report.ok else EXIT_FAIL


def _crosscheck(graph, stages, args, backends, opset=None, data=None):
    """Compare backends on ``data`` (the arrays given with -i NAME=FILE) or on random
    inputs drawn with ``--seed`` at each of ``--sizes``."""
    from ..runtime.crosscheck import crosscheck
    what = {"jax": "the model's jax.jit", "xla": "XLA compile", "onnx": "onnxruntime"}
    on = "on the given inputs" if data else f"on random inputs (seed {getattr(args, 'seed', 0)})"
    with stages.stage("check", ", ".join(what[b] for b in backends) + f" {on}"):
        report = crosscheck(graph, *(data or ()), backends=backends, rtol=args.rtol, atol=args.atol,
                            sizes=_sizes(args.sizes), opset=opset, seed=getattr(args, "seed", 0),
                            per_module=args.per_module, repro=args.repro)
    return report


def _check_precision(args) -> bool:
    """``--quantize``/``--quantize-mode``/``--precision``/``--samples`` misuse, before any
    work; True when the export converts the model."""
    from ..runtime.quantize import check_options
    if args.quantize is None and args.precision is None:
        if args.quantize_mode is not None:
            raise SpecError("--quantize-mode needs --quantize int8")
        if args.samples is not None:
            raise SpecError("--samples needs --quantize or --precision")
        return False
    if not args.cpu_kernels:
        raise SpecError("--no-cpu-kernels cannot go with --quantize/--precision: onnxruntime's "
                        "tools convert and run the model on its CPU provider")
    check_options(args.quantize, args.quantize_mode, args.precision,
                  weights_as_inputs=args.weights_as_inputs, external_data=args.external_data,
                  flags=True)
    return True


def cmd_export(args) -> int:
    from .._files import atomic_write
    from ..backends.onnx import export_onnx
    _check_diagnostics(args)
    converting = _check_precision(args)
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
    if converting:
        return _export_converted(args, graph, stages)
    with stages.stage("lower", f"ONNX -> {args.output}"):
        model = export_onnx(graph, args.output, opset=args.opset,
                            external_data=True if args.external_data else None,
                            weights_as_inputs=args.weights_as_inputs,
                            cpu_kernels=args.cpu_kernels)
    if not args.quiet:
        print(f"wrote {args.output}: {len(model.graph.node)} ONNX nodes, opset "
              f"{model.opset_import[0].version}", file=sys.stderr)
    if not args.check:
        return 0
    report = _crosscheck(graph, stages, args, ("jax", "xla", "onnx"), opset=args.opset,
                         data=args.input_data)
    print(report)
    return 0 if report.ok else EXIT_FAIL


def _export_converted(args, graph, stages) -> int:
    """``nnxc export --quantize int8 / --precision fp16``: the f32 export, converted by
    onnxruntime's tools, written atomically; then its accuracy table (and with --check the
    JAX/XLA cross-check and the table's tolerances decide the exit code)."""
    from .._files import atomic_write
    from ..backends.onnx import export_onnx
    from ..runtime import quantize as q
    draws, described = q.sample_inputs(graph, args.input_data, args.samples or q.SAMPLES,
                                       args.seed, _sizes(args.sizes))
    with stages.stage("lower", "ONNX (f32)"):
        f32 = export_onnx(graph, None, opset=args.opset)
        q.guard_size(f32)
    mode = (args.quantize_mode or q.default_mode(f32)) if args.quantize else None
    what = q.describe(args.quantize, mode, args.precision)
    tool = "onnxruntime " + ("quantize_dynamic" if mode == "dynamic" else "quantize_static"
                             if mode == "static" else "float16 converter")
    with stages.stage("convert", f"{what.split(' (')[0]}, {tool} -> {args.output}"):
        calibration = q.feeds(f32, draws) if mode == "static" else None
        model, mode = q.convert_onnx(f32, quantize=args.quantize, mode=mode,
                                     precision=args.precision, calibration=calibration)
        session = q.load_session(model, what)  # onnxruntime runs it before it is written
        atomic_write(args.output, model.SerializeToString())
    if not args.quiet:
        print(f"wrote {args.output}: {what}, {len(model.graph.node)} ONNX nodes, opset "
              f"{_onnx_opset(model)}; weight matrices and kernels: {q.weight_summary(model)}",
              file=sys.stderr)
    status = 0
    if args.check:
        report = _crosscheck(graph, stages, args, ("jax", "xla"), opset=args.opset,
                             data=args.input_data)
        print(report)
        status = 0 if report.ok else EXIT_FAIL
    kind = q.kind_of(args.quantize, mode, args.precision)
    with stages.stage("accuracy", f"onnxruntime vs the model's jax.jit on {described}"):
        table = q.accuracy(graph, model, draws, kind=kind, what=what, described=described,
                           rtol=args.rtol, atol=args.atol, calibrated=mode == "static",
                           session=session)
    print(table)
    if args.check and not table.ok:
        status = EXIT_FAIL
    return status


def _onnx_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def cmd_compile(args) -> int:
    import json

    from .._files import atomic_write
    from ..backends.xla.compile import compile as xla_compile
    from ..runtime.artifact import save
    from ..ir.summary import format_module_table, module_table
    platforms = tuple(p.strip() for p in args.platform.split(",") if p.strip())
    mesh = _mesh(args.mesh) if args.mesh else None
    dims = _dims(args.dims, "--dims")
    stages = Stages(args.quiet)
    traced = trace_model(args, stages, mesh=mesh)
    dump = args.dump_dir
    graph = optimize_graph(args, traced, stages, dump_dir=os.path.join(dump, "passes") if dump else None)
    symbolic = _symbols(graph)
    unknown = sorted(set(dims) - set(symbolic))
    if unknown:
        raise SpecError(f"--dims {', '.join(unknown)}: the model's inputs have "
                        + (f"the symbolic dims {', '.join(symbolic)}" if symbolic else "no symbolic dims"))
    _check_static_batch(graph, mesh)
    structs = _dump_structs(graph, dims, mesh, symbolic) if dump else None
    what = "XLA" + (f" on mesh {args.mesh}" if mesh else "")
    shard = shard_overrides(args, graph, mesh)
    with stages.stage("compile", what) as st:
        exe = xla_compile(graph, mesh=mesh, shard=shard)
        if symbolic:  # nothing to compile until the symbolic dims have sizes
            st.mark = "–"
            st.detail = (f"{what}: deferred until concrete sizes exist ({', '.join(symbolic)} symbolic); "
                         "the artifact compiles for each shape it is called with")
    with stages.stage("save", f"{','.join(platforms)} -> {args.output}"):
        save(exe, args.output, platforms=platforms)
    rows = module_table(graph, dims)
    if dump:
        sizes = ", ".join(f"{k}={v}" for k, v in sorted(_dump_dims(symbolic, dims).items()))
        with stages.stage("dump", dump + (f" (HLO and report at {sizes})" if sizes else "")):
            _write_ir(args, os.path.join(dump, "ir.before.ir"), traced)
            _write_ir(args, os.path.join(dump, "ir.after.ir"), graph)
            # symbolic dims stay symbolic in StableHLO, except on a mesh (JAX cannot check
            # that a symbolic dim divides over the devices)
            atomic_write(os.path.join(dump, "stablehlo.mlir"),
                         exe.as_text("stablehlo", *(structs if mesh is not None else ())))
            atomic_write(os.path.join(dump, "hlo.txt"), exe.as_text("hlo", *structs))
            cost = {k: v for k, v in exe.cost_analysis(*structs).items() if "{" not in k}  # totals only
            report = {"cost_analysis": cost, "memory_analysis": exe.memory_analysis(*structs),
                      "modules": rows, "dims": _dump_dims(symbolic, dims)}
            if mesh is not None:
                report["collectives"] = exe.collectives(*structs)
            atomic_write(os.path.join(dump, "report.json"), json.dumps(report, indent=2, default=str))
    if args.cost or args.cost_json:
        return _print_cost(args, exe, stages, _dump_dims(symbolic, dims))
    print(format_module_table(rows))
    if mesh is not None:
        print()
        print(_collectives_text(exe, graph, dims, mesh, symbolic, stages))
    return 0


def _collectives_text(exe, graph, dims, mesh, symbolic, stages) -> str:
    """The per-module table of the collectives XLA inserted on the mesh (at --dims sizes)."""
    from ..backends.xla.collectives import format_collectives
    n = mesh.shape["data"] if "data" in mesh.axis_names else 1
    structs = _dump_structs(graph, {k: dims.get(k, n) for k in symbolic}, mesh, symbolic)
    with stages.stage("collectives", "from the compiled HLO"):
        return format_collectives(exe.collectives(*structs))


def _print_cost(args, exe, stages, sizes: dict) -> int:
    """``--cost``: the cost table; ``--cost-json FILE`` also writes it as JSON ('-': prints
    the JSON instead of the table)."""
    from .._files import atomic_write
    at = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
    with stages.stage("cost", "XLA cost and memory analysis" + (f" at {at}" if at else "")):
        report = exe.cost(dims=sizes)
    if args.cost_json == "-":
        sys.stdout.write(report.to_json())
        return 0
    if args.cost_json:
        atomic_write(args.cost_json, report.to_json())
        if not args.quiet:
            print(f"wrote {args.cost_json} (cost report, JSON)", file=sys.stderr)
    print(report.format())
    return 0


def _mesh(text: str):
    """``--mesh data=2,model=4`` -> a jax Mesh; one that needs more devices is misuse."""
    from ..backends.xla.compile import parse_mesh
    try:
        return parse_mesh(text)
    except NnxcError as e:
        raise SpecError(str(e)) from None


def _symbols(graph) -> list[str]:
    from ..ir.types import parse_dim
    return sorted({n for v in graph.inputs for d in v.type.shape if isinstance(d, str)
                   for n in parse_dim(d).symbols})


def _dump_dims(symbolic: list[str], dims: dict) -> dict:
    """Sizes of the symbolic dims for the HLO and the cost report: ``--dims``, else 1."""
    return {n: dims.get(n, 1) for n in symbolic}


def _check_static_batch(graph, mesh) -> None:
    """On a mesh with a ``data`` axis, data inputs are split along their leading dim."""
    if mesh is None or "data" not in mesh.axis_names:
        return
    n = mesh.shape["data"]
    for v in graph.inputs:
        d = v.type.shape[0] if v.type.rank else None
        if isinstance(d, int) and d % n:
            raise SpecError(f"input {v.name} {v.type}: its leading dim {d} does not divide over the "
                            f"mesh's data axis ({n} devices); give a batch that is a multiple of {n} "
                            "(or a symbolic one, -i x:f32[B,...])")


def _dump_structs(graph, dims: dict, mesh, symbolic: list[str]) -> list:
    """The input shapes the dumped HLO and cost report are compiled for (checked up front:
    on a mesh, a leading dim split over the ``data`` axis must divide evenly)."""
    import jax

    from ..ir.types import to_dtype
    sizes = _dump_dims(symbolic, dims)
    structs = [jax.ShapeDtypeStruct(_resolve(v.type.shape, sizes), to_dtype(v.type.dtype))
               for v in graph.inputs]
    if mesh is not None and "data" in mesh.axis_names:
        n = mesh.shape["data"]
        for v, st in zip(graph.inputs, structs):
            if st.shape and st.shape[0] % n:
                given = "given" if set(symbolic) <= set(dims) else "default"
                raise SpecError(
                    f"--dump-dir compiles the HLO and cost report for concrete sizes: input {v.name} "
                    f"{v.type} has leading dim {st.shape[0]} ({given} sizes "
                    f"{', '.join(f'{k}={x}' for k, x in sizes.items()) or 'none'}), which the mesh's data "
                    f"axis ({n} devices) does not divide; pass --dims with a multiple of {n}, e.g. "
                    f"--dims {','.join(f'{k}={n}' for k in symbolic) or 'B=' + str(n)}")
    return structs


def cmd_run(args) -> int:
    import statistics

    import jax
    import numpy as np

    from ..runtime.artifact import load
    from ..runtime.bench import timings
    if wants_processes(args):
        return cmd_run_processes(args)
    if not os.path.isfile(args.artifact):
        raise SpecError(f"artifact not found: {args.artifact}")
    stages = Stages(args.quiet)
    with stages.stage("load", args.artifact):
        art = load(args.artifact)
    specs = art.manifest["inputs"]
    if args.random:
        inputs = _random_inputs(specs, _dims(args.dims), args.seed)
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


def _dims(text: str, option: str = "--dims") -> dict:
    out = {}
    for item in (t for t in (text or "").split(",") if t.strip()):
        k, sep, v = item.partition("=")
        if not sep or not k.strip().isidentifier() or not v.strip().isdigit() or int(v) < 1:
            raise SpecError(f"bad {option} {text!r}: expected sizes >= 1 like B=4,T=16")
        out[k.strip()] = int(v)
    return out


def _resolve(shape, dims: dict) -> tuple:
    from ..ir.params import eval_dim
    return tuple(d if isinstance(d, int) else int(eval_dim(d, {**dims})) for d in shape)


def _random_inputs(specs, dims: dict, seed: int = 0) -> list:
    import re

    import numpy as np

    from ..runtime.check import random_array
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        names = {n for d in s["shape"] if isinstance(d, str) for n in re.findall(r"[A-Za-z_]\w*", d)}
        out.append(random_array(rng, _resolve(s["shape"], {**{n: 1 for n in names}, **dims}), s["dtype"]))
    return out


def _file_inputs(specs, items: list[str]) -> list:
    """``NAME=FILE.npy`` / ``NAME=FILE.npz[:KEY]`` items -> arrays in the artifact's input order,
    in its dtypes (exactly representable data converts with a warning)."""
    from ..ir.types import to_dtype
    given, files = {}, {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise SpecError(f"bad input {item!r}: expected NAME=FILE.npy or NAME=FILE.npz:KEY")
        name = name.strip()
        given[name], files[name] = load_array(name, path), path
    names = [s["name"] for s in specs]
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in names]
    if missing or extra:
        raise SpecError(f"inputs: the artifact takes {', '.join(names)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unknown {', '.join(extra)}" if extra else "")
                        + " (or pass --random)")
    out = []
    for s in specs:
        label = f"input {s['name']} ({files[s['name']]})"
        data = fit_dtype(label, given[s["name"]], to_dtype(s["dtype"]))
        want = list(s["shape"])
        if data.ndim != len(want) or any(isinstance(d, int) and d != n for d, n in zip(want, data.shape)):
            raise SpecError(f"{label}: shape {tuple(data.shape)} does not fit "
                            f"{s['dtype']}[{','.join(str(d) for d in want)}]")
        out.append(data)
    return out


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
