"""Sharded runs from the command line: ``nnxc run --processes N`` (N local processes with a
coordinator on loopback), ``nnxc run --coordinator HOST:PORT --process-id I --num-processes N``
(one process of a run, on this host or another), and ``--shard VAR=SPEC`` for compile."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import NnxcError, SpecError

_RUNNER = "import sys; from nnxc.cli import main; sys.exit(main(sys.argv[1:]))"


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"bad coordinator {text!r}: expected HOST:PORT like 10.0.0.1:1234")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The ``nnxc run`` options of sharded, multi-process runs."""
    g = p.add_argument_group("sharded runs (artifacts saved with a mesh)")
    g.add_argument("--processes", type=_positive, metavar="N",
                   help="run in N local processes (coordinator on 127.0.0.1, CPU collectives "
                        "through gloo, the mesh's devices split evenly between them)")
    g.add_argument("--coordinator", type=_host_port, metavar="HOST:PORT",
                   help="join a run coordinated here (process 0 serves it)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index in the run")
    g.add_argument("--num-processes", type=_positive, metavar="N", help="processes in the run")
    g.add_argument("--timeout", type=_seconds, default=300.0, metavar="SECONDS",
                   help="end the run (and every process) after this long; joining waits at most "
                        "this long for the coordinator (default 300)")


def add_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", action="append", default=[], metavar="VAR=SPEC",
                   help="with --mesh: split the variables matching the path glob VAR by SPEC, "
                        "mesh axes or None per dim, e.g. 'blocks.*.up.kernel=None,model' "
                        "(overrides the model's own partitioning; '' replicates)")


def shard_overrides(args, graph, mesh) -> dict | None:
    """``--shard`` items -> {glob: PartitionSpec}, checked against the graph and mesh
    (misuse is a SpecError)."""
    items = getattr(args, "shard", None) or []
    if not items:
        return None
    if mesh is None:
        raise SpecError("--shard needs --mesh")
    from ..backends.xla.compile import parse_spec, variable_specs
    out = {}
    try:
        for item in items:
            glob, sep, spec = item.partition("=")
            if not sep or not glob.strip():
                raise NnxcError(f"bad --shard {item!r}: expected VAR=SPEC like 'blocks.*.kernel=None,model'")
            out[glob.strip()] = parse_spec(spec)
        variable_specs(graph, mesh.axis_names, out)
    except NnxcError as e:
        raise SpecError(f"--shard: {e}") from None
    return out


def wants_processes(args) -> bool:
    return bool(args.processes or args.coordinator or args.process_id is not None
                or args.num_processes)


def cmd_run_processes(args) -> int:
    """``nnxc run`` with --processes (spawn) or --coordinator (join)."""
    if args.processes and (args.coordinator or args.process_id is not None or args.num_processes):
        raise SpecError("--processes starts its own run; --coordinator, --process-id and "
                        "--num-processes join one started elsewhere (give one or the other)")
    if not os.path.isfile(args.artifact):
        raise SpecError(f"artifact not found: {args.artifact}")
    if args.processes:
        return _spawn(args)
    if not (args.coordinator and args.process_id is not None and args.num_processes):
        raise SpecError("joining a run needs --coordinator HOST:PORT, --process-id I and --num-processes N")
    if not 0 <= args.process_id < args.num_processes:
        raise SpecError(f"--process-id {args.process_id} is not in 0..{args.num_processes - 1}")
    return _join(args)


def _mesh_of(path: str) -> tuple[list, list] | None:
    """(axes, sizes) of an artifact's mesh, None when it was saved without one."""
    from ..runtime import artifact_format as fmt
    with fmt.mapped(path, verify_payload=False) as art:
        mesh = art.manifest.get("sharding", {}).get("mesh") if isinstance(
            art.manifest.get("sharding"), dict) else None
    return None if mesh is None else (mesh.get("axes"), mesh.get("sizes"))


def _spawn(args) -> int:
    import math

    from ..runtime.distributed import child_env, free_port, mesh_text, spawn
    n = args.processes
    mesh = _mesh_of(args.artifact)
    if mesh is None and n > 1:
        raise SpecError(f"{args.artifact} was saved without a mesh, so it runs in one process; "
                        "save it with nnxc compile --mesh AXES (or nnxc.save(..., mesh=...))")
    size = math.prod(mesh[1]) if mesh else 1
    if size % n:
        raise SpecError(f"--processes {n}: the artifact's mesh {mesh_text(*mesh)} has {size} devices, "
                        f"which do not split evenly over {n} processes")
    coordinator = f"127.0.0.1:{free_port()}"
    argv = [args.artifact, *sum((["-i", i] for i in args.inputs), [])]
    if args.random:
        argv += ["--random", "--dims", args.dims, "--seed", str(args.seed)]
    argv += ["--repeat", str(args.repeat), "--timeout", str(args.timeout)]
    if args.quiet:
        argv.append("-q")
    commands = []
    for i in range(n):
        extra = ["-o", args.output] if args.output and i == 0 else []
        commands.append([sys.executable, "-c", _RUNNER, "run", *argv, *extra, "--coordinator",
                         coordinator, "--process-id", str(i), "--num-processes", str(n)])
    if not args.quiet:
        print(f"  spawn      {n} processes x {size // n} CPU devices, coordinator {coordinator}",
              file=sys.stderr)
    codes = spawn(commands, env=child_env(size // n if mesh else None), timeout=args.timeout)
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        print(f"nnxc: error: process {bad[0][0]} of {n} exited with code {bad[0][1]}", file=sys.stderr)
        return 1
    return 0


def _join(args) -> int:
    import statistics

    import jax
    import numpy as np

    from ..runtime.artifact import load
    from ..runtime.bench import timings
    from ..runtime.distributed import gather, initialize
    from .commands import _dims, _file_inputs, _random_inputs
    from .stages import Stages
    me, n = args.process_id, args.num_processes
    phase = [f"joining the run coordinated at {args.coordinator}"]
    _watchdog(args.timeout, me, phase)
    stages = Stages(args.quiet or me != 0)
    try:
        with stages.stage("join", f"process {me} of {n} at {args.coordinator}"):
            initialize(args.coordinator, n, me, timeout=args.timeout)
        phase[0] = "the run"
        with stages.stage("load", f"{args.artifact} (this process's shards)"):
            art = load(args.artifact)
        specs = art.manifest["inputs"]
        inputs = (_random_inputs(specs, _dims(args.dims), args.seed) if args.random
                  else _file_inputs(specs, args.inputs))
        with stages.stage("run", "first call (compiles for these shapes)"):
            out = jax.block_until_ready(art(*inputs))
        times = timings(lambda: jax.block_until_ready(art.apply(art.state, *inputs)),
                        max(args.repeat, 0))
        leaves = [(p, gather(x)) for p, x in jax.tree_util.tree_flatten_with_path(out)[0]]
        if me == 0:
            for path, x in leaves:
                print(f"{jax.tree_util.keystr(path) or 'out':<24} {str(x.dtype):>8} {tuple(x.shape)}")
            if times:
                print(f"latency: median {1e3 * statistics.median(times):.3f} ms over {len(times)} runs "
                      f"({n} processes, {jax.device_count()} devices)")
            print(f"weights held by process 0: {getattr(art, 'local_weight_bytes', 0):,} bytes")
            if args.output:
                from .._files import atomic_open
                with atomic_open(args.output, "wb") as f:
                    np.savez(f, **{(jax.tree_util.keystr(p) or "out").strip(".[]'\"") or "out": x
                                   for p, x in leaves})
    except SpecError as e:
        _die(2, f"process {me}: {e}")
    except NnxcError as e:
        _die(1, f"process {me}: {e}" if not str(e).startswith("process") else str(e))
    jax.distributed.shutdown()
    return 0


def _die(code: int, message: str) -> None:
    """End this process now: a process of a run that failed must not wait for the others
    at shutdown (they may be waiting for it in a collective)."""
    print(f"nnxc: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def _watchdog(seconds: float, me: int, phase: list) -> None:
    """End this process after ``seconds``, naming what it was doing (``phase[0]``)."""
    import threading

    def fire():
        _die(1, f"process {me}: {phase[0]} did not finish within {seconds:g} s (--timeout)")
    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
