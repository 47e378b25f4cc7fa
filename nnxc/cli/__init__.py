"""The ``nnxc`` command: ``nnxc ir|check|export|compile|run|passes``."""
from __future__ import annotations

import argparse
import sys

from ..errors import NnxcError, SpecError
from .commands import cmd_check, cmd_ir
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
