"""Multi-process runs against one process: the tensor-parallel decoder of
tests/scripts/distributed_decoder.py (d 64, 4 heads, 2 blocks, batch 8 x 16) saved once as a
sharded artifact on data=2,model=4 and run

- in one process with 8 CPU devices (a one-process gloo run, as the reference of the tests),
- in 2 processes x 4 CPU devices on loopback, on two layouts of the same mesh: ``data``
  across the processes (each holds whole model shards for its half of the batch) and
  ``model`` across them (each holds half of each weight).

Per round, each run reports the fastest of 5 calls; the table gives the median over rounds,
per-process resident memory (VmHWM / VmRSS) and the weight bytes each process read from the
artifact and holds on its devices. Run it alone: the processes share the machine's cores.

    .venv/bin/python tools/bench_distributed.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "tests", "scripts", "distributed_decoder.py")
sys.path.insert(0, os.path.join(HERE, ".."))


def _json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def _run(commands, timeout: float = 300.0) -> list[dict]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(p.args)} failed:\n{err[-2000:]}")
            outs.append(_json(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def main(argv=None) -> int:
    from nnxc.runtime.distributed import free_port
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    one, procs = [], {"data_across": [], "model_across": []}
    memory, weights = None, None
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            [saved] = _run([[sys.executable, SCRIPT, "save", folder, str(free_port())]])
            one.append(saved["run_ms"])
            weights = saved["weight_bytes"]
            port = str(free_port())
            workers = _run([[sys.executable, SCRIPT, "worker", folder, port, str(i), "2"] for i in range(2)])
            for name in procs:
                procs[name].append(max(w[name]["run_ms"] for w in workers))
            memory = [(w["process"], w["rss_kib_after"], {n: (w[n]["local_weight_bytes"], w[n]["device_bytes"])
                                                          for n in procs}) for w in workers]
    print(f"decoder weights: {weights:,} B; {args.rounds} rounds, fastest of 5 calls each, median over rounds\n")
    print(f"{'run':<40}{'ms per call':>12}{'vs 1 process':>14}")
    base = statistics.median(one)
    print(f"{'1 process x 8 devices':<40}{base:>12.2f}{1.0:>14.2f}")
    for name, times in procs.items():
        m = statistics.median(times)
        label = f"2 processes x 4 devices, {name.replace('_', ' ')}"
        print(f"{label:<40}{m:>12.2f}{m / base:>14.2f}")
    print(f"\n{'process':<9}{'VmHWM MiB':>10}{'VmRSS MiB':>10}   weight bytes read / held on its devices")
    for pid, rss, held in memory:
        per = "; ".join(f"{n.replace('_', ' ')} {r:,} / {h:,}" for n, (r, h) in held.items())
        print(f"{pid:<9}{rss.get('VmHWM', 0) / 1024:>10.0f}{rss.get('VmRSS', 0) / 1024:>10.0f}   {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
