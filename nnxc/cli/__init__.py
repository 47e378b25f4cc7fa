"""The ``nnxc`` command: ``nnxc ir|check|export|compile|run|passes``."""
from __future__ import annotations

import argparse
import sys

from ..errors import NnxcError, SpecError
from .commands import cmd_check, cmd_compile, cmd_export, cmd_ir, cmd_passes, cmd_run
from .models import load_factory, parse_inputs, parse_kwargs  # noqa: F401 - public helpers

EXIT_FAIL, EXIT_USAGE = 1, 2


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
    _pass_args(p)
    p.add_argument("--dump-after-each", metavar="DIR",
                   help="write the IR after each pass that changed something into DIR")
    p.add_argument("--diff", action="store_true",
                   help="show what each pass changed, by module (text, or a page with --format html)")
    p.add_argument("--no-locs", action="store_true", help="leave out source locations")
    _constants_args(p)
    p.add_argument("--summary", action="store_true",
                   help="print parameters, bytes, FLOPs and nodes per module instead of the IR")
    p.add_argument("--depth", type=int, default=1, help="module path depth of --summary rows")
    p.set_defaults(func=cmd_ir)

    p = sub.add_parser("check", help="trace, compile and compare with the model's own output")
    _model_args(p)
    _tolerance_args(p)
    p.add_argument("--no-onnx", action="store_true", help="compare XLA only")
    _pass_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export", help="trace, optimize and export to ONNX (checked)")
    _model_args(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the newest onnxruntime runs)")
    p.add_argument("--external-data", action="store_true",
                   help="weights in one data file beside the model (automatic above 2 GB)")
    p.add_argument("--weights-as-inputs", action="store_true", help="weights as graph inputs")
    p.add_argument("--check", action="store_true",
                   help="cross-check JAX, XLA and onnxruntime; exit 1 beyond tolerance")
    p.add_argument("--dump-ir", metavar="FILE",
                   help="also write the traced IR here (and, with passes, FILE.<pipeline>.ir after them)")
    _constants_args(p)
    _tolerance_args(p)
    _pass_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compile", help="trace, optimize and compile ahead of time into an artifact")
    _model_args(p)
    p.add_argument("-o", "--output", required=True, help="the .nnxc artifact to write")
    p.add_argument("--platform", default="cpu", help="comma-separated: cpu,cuda,rocm,tpu (default cpu)")
    p.add_argument("--dump-dir", metavar="DIR",
                   help="write IR before/after passes, StableHLO, optimized HLO and a cost/memory report")
    p.add_argument("--mesh", metavar="AXES", help="compile sharded on a mesh, e.g. data=2,model=4")
    _constants_args(p)
    _pass_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled artifact on .npy/.npz or random inputs")
    p.add_argument("artifact", help="a .nnxc file written by nnxc compile / nnxc.save")
    p.add_argument("-i", "--input", dest="inputs", action="append", default=[], metavar="NAME=FILE",
                   help="an input from a .npy file, or NAME=FILE.npz:KEY (repeat)")
    p.add_argument("--random", action="store_true", help="random inputs from the manifest's specs")
    p.add_argument("--dims", default="", metavar="B=4,...", help="sizes of symbolic dims for --random")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--repeat", type=int, default=10, help="timed runs after the first (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("passes", help="list the optimization passes and presets")
    p.set_defaults(func=cmd_passes)
    return parser


def _constants_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--full-constants", dest="full_constants", action="store_const", const=True,
                   help="print every constant's data in IR text, so it parses back into a graph "
                        "that runs (default: when constants total <= 64 KiB)")
    g.add_argument("--elide-constants", dest="full_constants", action="store_const", const=False,
                   help="print constants of more than 16 elements as elided<hash>")
    p.add_argument("--sidecar", action="store_true",
                   help="write elided constants beside IR text files (FILE.safetensors, keyed by "
                        "hash); nnxc.ir.parse(text, sidecar=...) restores them")


def _tolerance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtol", type=float, help="relative tolerance (default by dtype: f32 1e-5)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: rtol x output scale)")
    p.add_argument("--sizes", default="1,3", help="sizes for symbolic dims in the check (default 1,3)")


def _pass_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-O", "--passes", metavar="PIPELINE",
                   help="optimize: a preset (none, default, inference) or pass names like simplify,dce")
    p.add_argument("--freeze", metavar="FILTER",
                   help="variables to bake in as constants: BatchStat, Param, *.bn*.*, !Param, a,b ...")
    p.add_argument("--prune", metavar="FILTER",
                   help="variable updates to drop: RngCount, Intermediate, *.dropout.* ...")
    p.add_argument("--stats", action="store_true", help="print per-pass statistics")


def _version() -> str:
    from .. import __version__
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
