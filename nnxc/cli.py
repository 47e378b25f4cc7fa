"""The ``nnxc`` command: ``nnxc ir|check|export|compile|run`` on a model spec ``file.py:factory``."""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
import time
from contextlib import contextmanager

from .errors import NnxcError, SpecError

EXIT_FAIL, EXIT_USAGE = 1, 2


# -- model and input specs ---------------------------------------------------------

def load_factory(spec: str):
    """``path/to/file.py:factory`` or ``package.module:factory`` -> the factory callable."""
    if ":" not in spec:
        raise SpecError(f"bad model spec {spec!r}: expected path/to/file.py:factory or "
                        "package.module:factory")
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise SpecError(f"bad model spec {spec!r}: expected path/to/file.py:factory")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise SpecError(f"model file not found: {target}")
        folder = os.path.dirname(os.path.abspath(target))
        name = "nnxc_user_" + os.path.splitext(os.path.basename(target))[0]
        mod_spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module  # dataclass-based code (Linen) looks its module up here
        sys.path.insert(0, folder)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's module failed to import
            raise NnxcError(f"importing {target} failed: {_short_exc(e)}") from None
        finally:
            sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise SpecError(f"cannot import module {target!r}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module.__name__)
        raise SpecError(f"{target} has no factory {attr!r}" + (f" (found: {', '.join(names)})" if names else ""))
    return factory


def _short_exc(e: BaseException) -> str:
    import traceback
    own = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "site-packages" not in f.filename and not f.filename.startswith(own)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def parse_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """``["x:f32[B,784]", "f32[3]"]`` -> (names, specs); names may be empty strings."""
    from .frontend.specs import parse_spec
    names, specs = [], []
    for item in items:
        name, sep, spec = item.partition(":")
        if not sep or "[" in name:
            name, spec = "", item
        if name and not name.isidentifier():
            raise SpecError(f"bad input {item!r}: the name {name!r} is not an identifier")
        parse_spec(spec)
        names.append(name)
        specs.append(spec.strip())
    return names, specs


def parse_kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"bad keyword {item!r}: expected name=value, e.g. deterministic=True")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_model(args):
    factory = load_factory(args.model)
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise NnxcError(f"factory {args.model} raised {_short_exc(e)}") from None
    return made


def trace_model(args, stages):
    from flax import nnx

    from .frontend.trace import trace
    made = build_model(args)
    names, specs = parse_inputs(args.inputs)
    kwargs = parse_kwargs(args.kw)
    variables = None
    if isinstance(made, tuple) and len(made) == 2:
        made, variables = made
    if getattr(args, "eval", False) and isinstance(made, nnx.Module):
        made.eval()
    with stages.stage("trace"):
        try:
            if variables is not None:
                graph = trace(made, *specs, variables=variables, **kwargs)
            else:
                graph = trace(made, *specs, **kwargs)
        except NnxcError:
            raise
        except Exception as e:  # noqa: BLE001 - the model's own code failed on these inputs
            raise NnxcError(f"tracing {args.model} failed: {_short_exc(e)}") from None
    for want, v in zip(names, graph.inputs):
        if want and v.name != want:
            raise SpecError(f"input {want!r} does not match the model's argument {v.name!r} "
                            f"(inputs are positional: {', '.join(x.name for x in graph.inputs)})")
    _warn_training(graph)
    return graph


def _warn_training(graph) -> None:
    stats = [p for p, _ in graph.updates if graph.variable(p).kind in ("BatchStat", "batch_stats")]
    rng = sorted({n.path or "<top>" for n in graph.walk() if n.op in ("random_bits", "threefry2x32")})
    if stats or rng:
        parts = []
        if stats:
            parts.append(f"updates batch statistics ({', '.join(stats[:3])}{' ...' if len(stats) > 3 else ''})")
        if rng:
            parts.append(f"draws random numbers ({', '.join(rng[:3])})")
        print(f"nnxc: warning: the model runs in training mode: it {' and '.join(parts)}; "
              "pass --eval (NNX) or -k train=False / deterministic=True to export inference",
              file=sys.stderr)


# -- stage printing ------------------------------------------------------------------

class Stages:
    """Prints each stage as it finishes: ``  trace      ✓  0.41 s``."""

    def __init__(self, quiet: bool = False):
        from .runtime.progress import Progress
        self.quiet = quiet
        self.failed = False
        self.progress = Progress(quiet)  # a spinner while a stage runs, on a terminal only

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        t0 = time.perf_counter()
        try:
            with self.progress.task(f"{name} {detail}".rstrip()):
                yield
        except BaseException:
            self._line(name, "✗", time.perf_counter() - t0, detail)
            raise
        self._line(name, "✓", time.perf_counter() - t0, detail)

    def _line(self, name, mark, seconds, detail):
        if not self.quiet:
            print(f"  {name:<10} {mark} {seconds:6.2f} s  {detail}".rstrip(), file=sys.stderr)


# -- commands -----------------------------------------------------------------------

IR_FORMATS = {".ir": "text", ".txt": "text", ".json": "json", ".dot": "dot", ".gv": "dot",
              ".html": "html", ".htm": "html"}


def cmd_ir(args) -> int:
    from ._files import atomic_write
    from .ir import verify
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
        from .runtime.passdiff import format_steps, step_passes
        with stages.stage("passes", args.passes or "default"):
            steps = step_passes(graph, pipeline, progress=stages.progress)
        graph = steps[-1].after if steps else graph
    elif pipeline is not None:
        from .passes import optimize
        with stages.stage("passes", args.passes):
            graph = optimize(graph, pipeline)
    if args.summary:
        from .runtime.summary import format_module_table, module_table
        print(format_module_table(module_table(graph, depth=args.depth)))
        return 0
    with stages.stage("render", fmt):
        if steps is not None:
            from .ir.view.diff_html import to_diff_html
            text = to_diff_html(steps, graph.name) if fmt == "html" else format_steps(steps) + "\n"
        elif fmt == "json":
            from .ir.jsonio import to_json
            text = to_json(graph)
        elif fmt == "dot":
            from .ir.view import to_dot
            text = to_dot(graph, locs=not args.no_locs)
        elif fmt == "html":
            from .ir.view import to_html
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
    from .passes import PASSES, PRESETS
    if text in PRESETS:
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in PASSES]
    if unknown or not names:
        raise SpecError(f"bad --passes {text!r}: use a preset ({', '.join(PRESETS)}) or pass names "
                        f"separated by commas ({', '.join(PASSES)})")
    return names


def cmd_check(args) -> int:
    from .runtime.check import check_graph, format_table
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


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model spec: path/to/file.py:factory or package.module:factory")
    p.add_argument("-i", "--input", dest="inputs", action="append", default=[], metavar="NAME:SPEC",
                   help="an input spec like x:f32[B,784] (repeat, in argument order)")
    p.add_argument("-k", "--kw", action="append", default=[], metavar="NAME=VALUE",
                   help="a static keyword argument for the model call, e.g. deterministic=True")
    p.add_argument("--eval", action="store_true", help="call model.eval() first (NNX)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnxc", description="Compile Flax models: IR, XLA, ONNX.")
    parser.add_argument("--version", action="version", version=f"nnxc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ir", help="trace a model and print or write its IR")
    _model_args(p)
    p.add_argument("-o", "--output", help="write the IR here instead of printing it")
    p.add_argument("-f", "--format", choices=["text", "json", "dot", "html"],
                   help="text IR, JSON (schema nnxc-ir v1), Graphviz DOT, or an interactive HTML page "
                        "(default: from the -o extension, else text)")
    p.add_argument("--passes", metavar="PIPELINE",
                   help="optimize first: a preset (default, inference, ...) or pass names like simplify,dce")
    p.add_argument("--diff", action="store_true",
                   help="show what each pass changed, by module (text, or a page with --format html)")
    p.add_argument("--no-locs", action="store_true", help="leave out source locations")
    p.add_argument("--summary", action="store_true",
                   help="print parameters, bytes, FLOPs and nodes per module instead of the IR")
    p.add_argument("--depth", type=int, default=1, help="module path depth of --summary rows")
    p.set_defaults(func=cmd_ir)

    p = sub.add_parser("check", help="trace, compile and compare with the model's own output")
    _model_args(p)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--sizes", default="1,3", help="sizes for symbolic dims (default 1,3)")
    p.add_argument("--no-onnx", action="store_true", help="compare XLA only")
    p.set_defaults(func=cmd_check)
    for extra in EXTRA_COMMANDS:
        extra(sub)
    return parser


EXTRA_COMMANDS: list = []  # functions adding subcommands (export, compile, run, passes)


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed one usage line
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except SpecError as e:
        print(f"nnxc: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NnxcError as e:
        print(f"nnxc: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
