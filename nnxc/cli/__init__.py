"""The ``nnxc`` command: ``nnxc ir|check|export|compile|run|passes``."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import NnxcError, NnxcWarning, SpecError
from .commands import cmd_check, cmd_compile, cmd_export, cmd_ir, cmd_passes, cmd_run
from .distributed import add_compile_args, add_run_args
from .models import load_factory, parse_inputs, parse_kwargs  # noqa: F401 - public helpers

EXIT_FAIL, EXIT_USAGE = 1, 2
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


class _Parser(argparse.ArgumentParser):
    """argparse that reports misuse in one line (``nnxc export: error: ...``) and exits 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _opset(text: str) -> int:
    from ..backends.onnx.export import supported_opsets
    from ..backends.onnx.native import default_opset
    ok = supported_opsets()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in ok:
        raise argparse.ArgumentTypeError(f"opset {text!r} is not supported: nnxc exports ai.onnx "
                                         f"opsets {ok.start}..{ok.stop - 1} (default {default_opset()}, "
                                         "the newest at which onnxruntime runs every fused op natively)")
    return value


def _platforms(text: str) -> str:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PLATFORMS]
    if bad or not names:
        hint = " (JAX calls NVIDIA GPUs cuda, AMD GPUs rocm)" if {"gpu", "nvidia", "amd"} & set(bad) else ""
        raise argparse.ArgumentTypeError(f"unknown platform(s) {', '.join(bad) or repr(text)}: choose "
                                         f"from {', '.join(PLATFORMS)}, separated by commas{hint}")
    return ",".join(names)


def _mesh_text(text: str) -> str:
    items = [t.strip() for t in text.split(",")]
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip().isidentifier() or not v.strip().isdigit() or int(v) < 1:
            raise argparse.ArgumentTypeError(f"bad mesh {text!r}: expected axis=size pairs like "
                                             "data=2,model=4")
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model spec: path/to/file.py:factory or package.module:factory")
    p.add_argument("-i", "--input", dest="inputs", action="append", default=[],
                   metavar="NAME:SPEC|NAME=FILE",
                   help="an input, in argument order (repeat): a spec like x:f32[B,784], or data "
                        "x=x.npy / x=batch.npz[:KEY] (its dtype and shape are the spec unless one "
                        "is given; nnxc check runs on it)")
    p.add_argument("-k", "--kw", action="append", default=[], metavar="NAME=VALUE",
                   help="a static keyword argument for the model call, e.g. deterministic=True")
    p.add_argument("--method", metavar="NAME",
                   help="trace this method of the model instead of __call__ (e.g. encode)")
    p.add_argument("--mutable", metavar="COLLECTIONS",
                   help="Linen: the collections the call may update, e.g. batch_stats (or all)")
    p.add_argument("--eval", action="store_true", help="call model.eval() first (NNX)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", metavar="DIR",
                   help="restore an Orbax checkpoint of nnx.state(model) (Linen: of its variables) "
                        "into the model first")
    g.add_argument("--weights", metavar="FILE",
                   help="load a .safetensors file keyed by variable path (linear1.kernel) into the "
                        "model first; variables it leaves out keep their values (with a warning)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnxc", description="Compile Flax models: IR, XLA, ONNX.")
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
    p.add_argument("--depth", type=_count, default=1, help="module path depth of --summary rows")
    p.add_argument("--mesh", metavar="AXES", type=_mesh_text,
                   help="build and trace the model inside a mesh, e.g. data=2,model=4; --summary and "
                        "the HTML page then list the collectives XLA inserts per module")
    p.set_defaults(func=cmd_ir)

    p = sub.add_parser("check", help="trace, compile and compare with the model's own output")
    _model_args(p)
    _tolerance_args(p)
    p.add_argument("--no-onnx", action="store_true", help="compare XLA only")
    _diagnostic_args(p)
    p.add_argument("--seed", type=_count, default=0,
                   help="seed of the random inputs (default 0; not used with -i NAME=FILE)")
    _pass_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export", help="trace, optimize and export to ONNX (checked)")
    _model_args(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=_opset,
                   help="ONNX opset (default: the newest at which onnxruntime runs every fused op natively)")
    p.add_argument("--external-data", action="store_true",
                   help="weights in one data file beside the model (automatic above 2 GB)")
    p.add_argument("--weights-as-inputs", action="store_true", help="weights as graph inputs")
    p.add_argument("--no-cpu-kernels", dest="cpu_kernels", action="store_false",
                   help="keep f16/bf16 ops onnxruntime's CPU provider has no kernel for in their "
                        "own dtype (for runtimes that have them, e.g. CUDA) instead of computing "
                        "them in f32 and rounding back (--check still runs on the CPU provider)")
    p.add_argument("--check", action="store_true",
                   help="cross-check JAX, XLA and onnxruntime; exit 1 beyond tolerance (with "
                        "--quantize/--precision: the converted model, at their tolerances)")
    _precision_args(p)
    _diagnostic_args(p)
    p.add_argument("--dump-ir", metavar="FILE",
                   help="also write the traced IR here (and, with passes, FILE.<pipeline>.ir after them)")
    _constants_args(p)
    _tolerance_args(p)
    _pass_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compile", help="trace, optimize and compile ahead of time into an artifact")
    _model_args(p)
    p.add_argument("-o", "--output", required=True, help="the .nnxc artifact to write")
    p.add_argument("--platform", default="cpu", type=_platforms,
                   help="comma-separated: cpu,cuda,rocm,tpu (default cpu)")
    p.add_argument("--dump-dir", metavar="DIR",
                   help="write IR before/after passes, StableHLO, optimized HLO and a cost/memory report")
    p.add_argument("--dims", default="", metavar="B=4,...",
                   help="sizes of symbolic dims for the --dump-dir HLO and cost report (default 1)")
    p.add_argument("--mesh", metavar="AXES", type=_mesh_text,
                   help="compile sharded on a mesh, e.g. data=2,model=4 (the factory runs inside it)")
    add_compile_args(p)
    p.add_argument("--cost", action="store_true",
                   help="print FLOPs (with loop trip counts, and XLA's own figure), bytes accessed, "
                        "peak memory and argument/output/temp sizes, per module, at --dims sizes")
    p.add_argument("--cost-json", metavar="FILE",
                   help="write the --cost report as JSON to FILE ('-': print it instead of the table)")
    _constants_args(p)
    _pass_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled artifact on .npy/.npz or random inputs")
    p.add_argument("artifact", help="a .nnxc file written by nnxc compile / nnxc.save")
    p.add_argument("-i", "--input", dest="inputs", action="append", default=[], metavar="NAME=FILE",
                   help="an input from a .npy file, or NAME=FILE.npz:KEY (repeat)")
    p.add_argument("--random", action="store_true", help="random inputs from the manifest's specs")
    p.add_argument("--dims", default="", metavar="B=4,...", help="sizes of symbolic dims for --random")
    p.add_argument("--seed", type=_count, default=0, help="seed of --random (default 0)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--repeat", type=_count, default=10, help="timed runs after the first (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress")
    add_run_args(p)
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


def _precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8"],
                   help="quantize with onnxruntime's tools (int8 weights per output channel) and "
                        "print an accuracy table against the f32 model")
    p.add_argument("--quantize-mode", choices=["dynamic", "static"],
                   help="dynamic: activations quantized at run time (default for models without "
                        "Conv: transformers, MLPs); static: activations calibrated on the -i data "
                        "or random draws, QDQ format (default for models with Conv: CNNs)")
    p.add_argument("--precision", choices=["fp16", "bf16"],
                   help="fp16: weights and compute in fp16, inputs and outputs stay f32; prints an "
                        "accuracy table (bf16 is refused: onnxruntime's CPU provider lacks its kernels)")
    p.add_argument("--seed", type=_count, default=0,
                   help="seed of the random inputs of --check, and of the calibration and accuracy "
                        "inputs of --quantize/--precision (default 0; not used with -i NAME=FILE)")
    p.add_argument("--samples", type=_positive, metavar="N",
                   help="random input draws for --quantize/--precision calibration and accuracy "
                        "(default 8; not used with -i NAME=FILE)")


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _diagnostic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-module", action="store_true",
                   help="also compare the values at every module boundary and name the first module "
                        "beyond tolerance")
    p.add_argument("--repro", metavar="DIR",
                   help="on a mismatch, write a self-contained reproduction into DIR (IR, weights, "
                        "inputs, ONNX, reference outputs, versions, repro.py)")


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
    from .._version import __version__
    return __version__


def _user_path(path) -> str:
    """The file the user named, not the temporary file nnxc writes it through."""
    import os
    import re
    path = os.fsdecode(path)
    m = re.fullmatch(r"\.(.+)\.tmp-[0-9a-z-]+", os.path.basename(path))
    return os.path.join(os.path.dirname(path), m.group(1)) if m else path


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """nnxc's own warnings as one line, ``nnxc: warning: ...``; others as Python prints them."""
    if issubclass(category, NnxcWarning):
        print(f"nnxc: warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Run one nnxc command; returns the exit code.

    Misuse (bad options, specs, files, filters) prints one line and returns 2; a model or an
    export that fails returns 1 with one message. No NnxcError ever shows a traceback; only an
    unexpected internal error does (it is a bug in nnxc)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed one line (or --help / --version)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", NnxcWarning)
        try:
            return int(args.func(args) or 0)
        except SpecError as e:
            print(f"nnxc: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except NnxcError as e:
            print(f"nnxc: error: {e}", file=sys.stderr)
            return EXIT_FAIL
        except OSError as e:  # writing an output: a full disk, a folder in the way, no permission
            if e.filename is None:
                raise
            print(f"nnxc: error: {e.strerror or e}: {_user_path(e.filename)}", file=sys.stderr)
            return EXIT_FAIL
        except KeyboardInterrupt:
            print("nnxc: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
