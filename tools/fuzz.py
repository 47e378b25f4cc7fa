"""Differential fuzzing campaigns: random valid programs (tests/fuzzgen.py) checked against
their own jax.jit through every nnxc stage.

    .venv/bin/python tools/fuzz.py --count 500 --seed 0 --out fuzz-out [--stages none,default,...]
                                   [--jobs 1] [--timeout 120] [--reduce] [--verbose]
    .venv/bin/python tools/fuzz.py --seeds 17,29 --out fuzz-out --reduce     # re-check given seeds

Programs are seeds S .. S+N-1 (``fuzzgen.generate(seed)``), or the ``--seeds`` listed. Each runs in a worker process
under a per-program timeout (signal.alarm; a worker that hangs in native code or dies is
killed/restarted and the program counted as a crash), so one bad program never ends the
campaign. Prints a summary table (programs, ok, refused, mismatches by stage, crashes by
stage and exception type, ort_refused, xla_only: ONNX differing from jax.jit where JAX's own
op-by-op evaluation agrees with ONNX, counted apart) and writes to ``--out``:

  <kind>_<seed>.py      a standalone reproducer per failing program and kind (mismatch, crash,
                        ort_refused, invalid): the program and the failing checks, runnable
                        with only nnxc installed (``python crash_17.py``)
  <kind>_<seed>.min.py  with --reduce: the same failure on a shrunk program
  summary.json          totals, per-stage counts, and every failure and refusal

Stages: none, default (bit-exact), fast, inference (within tolerance), onnx (onnxruntime,
within tolerance), roundtrip (IR text/JSON). Default: all but fast.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
FAIL_KINDS = ("mismatch", "crash", "ort_refused", "invalid")


class ProgramTimeout(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the checks eats it."""


def _on_alarm(signum, frame):
    raise ProgramTimeout()


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run_one(fuzzgen, seed: int, stages, out_dir: str, timeout: int, do_reduce: bool,
            on_stage=None) -> dict:
    """Generate, check and (on failure) write reproducers for one program; never raises."""
    rec = {"seed": seed, "program": None, "outcomes": [], "files": []}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    stage_box = {"stage": "generate"}
    program = None
    try:
        program = fuzzgen.generate(seed)
        rec["program"] = program.kind
        rec["lines"] = program.n_lines
        rec["features"] = program.features
        stage_box["stage"] = "check"

        def at(stage):
            stage_box["stage"] = stage
            if on_stage:
                on_stage(stage)

        outcomes = fuzzgen.check(program, stages, on_stage=at)
    except ProgramTimeout:
        outcomes = [fuzzgen.Outcome(stage_box["stage"], "crash", "Timeout",
                                    f"the program did not finish within {timeout} s")]
    except (BrokenPipeError, EOFError):  # the campaign process is gone
        raise
    except Exception as e:  # noqa: BLE001 - a generator bug must not end the campaign
        outcomes = [fuzzgen.Outcome("generate", "invalid", type(e).__name__,
                                    "".join(traceback.format_exception(e))[-3000:])]
    finally:
        signal.alarm(0)
    rec["outcomes"] = [vars(o) for o in outcomes]
    if program is None:
        return rec
    for kind in sorted({o.kind for o in outcomes if o.failed}):
        path = os.path.join(out_dir, f"{kind}_{seed}.py")
        try:
            _atomic_write(path, fuzzgen.reproducer(program, outcomes, kind))
            rec["files"].append(os.path.basename(path))
        except Exception as e:  # noqa: BLE001
            rec.setdefault("notes", []).append(f"cannot write {path}: {e}")
    if do_reduce and any(o.failed for o in outcomes):
        rec.update(_reduce(fuzzgen, program, outcomes, out_dir, timeout))
    return rec


def _reduce(fuzzgen, program, outcomes, out_dir: str, timeout: int) -> dict:
    first = next(o for o in outcomes if o.failed)
    target = (first.stage, first.kind, first.error if first.kind in ("crash", "refused") else "")
    stages = (first.stage,) if first.stage in fuzzgen.STAGES else fuzzgen.DEFAULT_STAGES

    def still_fails(cand):
        return target in fuzzgen.signature(fuzzgen.check(cand, stages))

    signal.alarm(timeout * 4)
    try:
        small = fuzzgen.reduce(program, still_fails, max_checks=60)
    except ProgramTimeout:
        return {"reduced": None}
    finally:
        signal.alarm(0)
    if small is program:
        return {"reduced": None}
    small_outcomes = fuzzgen.check(small, stages)
    path = os.path.join(out_dir, f"{first.kind}_{program.seed}.min.py")
    _atomic_write(path, fuzzgen.reproducer(small, small_outcomes, first.kind))
    return {"reduced": os.path.basename(path), "reduced_lines": small.n_lines}


def worker(conn, stages, out_dir: str, timeout: int, do_reduce: bool) -> None:
    sys.path.insert(0, TESTS)
    import warnings
    warnings.simplefilter("ignore")
    import jax
    import fuzzgen
    done = 0
    try:
        conn.send(("ready", None))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            rec = run_one(fuzzgen, msg, stages, out_dir, timeout, do_reduce,
                          on_stage=lambda stage: conn.send(("stage", stage)))
            conn.send(("done", rec))
            done += 1
            if done % 25 == 0:
                jax.clear_caches()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the campaign ended or was stopped
        return


class Pool:
    """Worker processes fed one seed at a time; a dead or hung worker is replaced."""

    def __init__(self, jobs: int, stages, out_dir: str, timeout: int, do_reduce: bool):
        self.ctx = mp.get_context("spawn")
        self.args = (stages, out_dir, timeout, do_reduce)
        self.timeout = timeout
        self.workers = [self._start() for _ in range(jobs)]

    def _start(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker, args=(child, *self.args), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "seed": None, "since": None, "ready": False,
                "served": 0, "stage": "generate"}

    def _kill(self, w: dict) -> None:
        if w["proc"].is_alive():
            os.kill(w["proc"].pid, signal.SIGKILL)  # our own child, by its pid
        w["proc"].join(5)
        w["conn"].close()

    def run(self, seeds, on_result) -> None:
        todo = list(seeds)[::-1]
        while todo or any(w["seed"] is not None for w in self.workers):
            for w in self.workers:
                if w["ready"] and w["seed"] is None and todo:
                    if w["served"] >= 100:  # bound memory: a fresh process every 100 programs
                        w["conn"].send(None)
                        w["proc"].join(10)
                        self._kill(w)
                        w.update(self._start())
                        continue
                    w["seed"] = todo.pop()
                    w["since"] = time.monotonic()
                    w["stage"] = "generate"
                    w["conn"].send(w["seed"])
            conns = [w["conn"] for w in self.workers]
            ready = wait(conns, timeout=5)
            for w in list(self.workers):
                if w["conn"] in ready:
                    try:
                        kind, rec = w["conn"].recv()
                    except (EOFError, OSError):
                        self._replace(w, on_result, "the worker process died "
                                      f"(exit code {w['proc'].exitcode})")
                        continue
                    if kind == "ready":
                        w["ready"] = True
                    elif kind == "stage":
                        w["stage"] = rec
                    else:
                        w["seed"] = None
                        w["served"] += 1
                        on_result(rec)
                elif w["seed"] is not None and time.monotonic() - w["since"] > self.timeout * 6 + 120:
                    self._replace(w, on_result, f"hung beyond {self.timeout * 6 + 120} s (killed)")
                elif not w["proc"].is_alive() and not w["conn"].poll():
                    self._replace(w, on_result, f"the worker process died (exit code {w['proc'].exitcode})")

    def _replace(self, w: dict, on_result, why: str) -> None:
        seed, stage = w["seed"], w["stage"]
        self._kill(w)
        w.update(self._start())
        if seed is not None:
            on_result({"seed": seed, "program": None, "files": [], "outcomes": [
                {"stage": stage, "kind": "crash", "error": "ProcessDied",
                 "message": f"{why} during stage {stage}"}]})

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
            w["proc"].join(10)
            self._kill(w)


def _write_died(rec: dict, out_dir: str) -> None:
    """A reproducer for a program that killed its worker (written by this process)."""
    try:
        import fuzzgen
        program = fuzzgen.generate(rec["seed"])
        outcomes = [fuzzgen.Outcome(**o) for o in rec["outcomes"]]
        if outcomes[0].stage not in fuzzgen.STAGES:
            outcomes[0].stage = "trace"  # rerun everything
        path = os.path.join(out_dir, f"crash_{rec['seed']}.py")
        _atomic_write(path, fuzzgen.reproducer(program, outcomes, "crash"))
        rec.update(program=program.kind, files=[os.path.basename(path)])
    except Exception as e:  # noqa: BLE001
        rec.setdefault("notes", []).append(f"no reproducer: {type(e).__name__}: {e}")


def summarize(records: list, stages) -> dict:
    totals = collections.Counter()
    mismatch_by_stage = collections.Counter()
    crash_by = collections.Counter()
    refused_by = collections.Counter()
    ort_by = collections.Counter()
    failures, xla_only = [], []
    for rec in records:
        kinds = {o["kind"] for o in rec["outcomes"]}
        totals["programs"] += 1
        if kinds <= {"ok", "skipped"}:
            totals["ok"] += 1
        elif "refused" in kinds and not kinds & set(FAIL_KINDS):
            totals["refused"] += 1
        for kind in (*FAIL_KINDS, "xla_only"):
            if kind in kinds:
                totals[kind] += 1
        for o in rec["outcomes"]:
            first = (o["message"].splitlines() or [""])[0][:200]
            if o["kind"] == "mismatch":
                mismatch_by_stage[o["stage"]] += 1
            elif o["kind"] == "crash":
                crash_by[(o["stage"], o["error"])] += 1
            elif o["kind"] == "refused":
                refused_by[(o["stage"], o["error"], _refusal_reason(o["message"]))] += 1
            elif o["kind"] == "ort_refused":
                ort_by[(o["stage"], first[:120])] += 1
            elif o["kind"] == "xla_only":
                xla_only.append({"seed": rec["seed"], "stage": o["stage"], "message": o["message"][:1000]})
            if o["kind"] in FAIL_KINDS:
                failures.append({"seed": rec["seed"], "program": rec.get("program"), "stage": o["stage"],
                                 "kind": o["kind"], "error": o["error"], "message": o["message"][:2000],
                                 "files": rec.get("files", []), "reduced": rec.get("reduced"),
                                 "lines": rec.get("lines"), "reduced_lines": rec.get("reduced_lines")})
    return {"stages": list(stages), "totals": {k: totals[k] for k in
                                               ("programs", "ok", "refused", *FAIL_KINDS, "xla_only")},
            "mismatch_by_stage": dict(mismatch_by_stage),
            "crash_by_stage_and_type": [{"stage": s, "error": e, "count": n} for (s, e), n in crash_by.most_common()],
            "refused_by_reason": [{"stage": s, "error": e, "reason": r, "count": n}
                                  for (s, e, r), n in refused_by.most_common()],
            "ort_refused": [{"stage": s, "message": m, "count": n} for (s, m), n in ort_by.most_common()],
            "xla_only": xla_only, "failures": failures}


def _refusal_reason(message: str) -> str:
    lines = message.splitlines()
    if len(lines) > 1 and lines[1].strip().startswith("- "):
        # "  - op in module 'x' at loc: reason" -> "op: reason"
        item = lines[1].strip()[2:]
        op = item.split(" ", 1)[0]
        return f"{op}: {item.rsplit(': ', 1)[-1][:100]}"
    return (lines[0] if lines else "")[:140]


def print_summary(summary: dict) -> None:
    t = summary["totals"]
    cols = ("programs", "ok", "refused", "mismatch", "crash", "ort_refused", "invalid", "xla_only")
    print()
    print("  ".join(f"{c:>11}" for c in cols))
    print("  ".join(f"{t.get(c, 0):>11}" for c in cols))
    print("\n(a program with several failing stages counts once per kind; refused = no failure "
          "but at least one clear nnxc refusal)")
    print("\nmismatches by stage:")
    for s in summary["stages"] + ["trace"]:
        n = summary["mismatch_by_stage"].get(s, 0)
        if n or s != "trace":
            print(f"  {s:<10} {n}")
    print("\ncrashes by stage and exception type:")
    if not summary["crash_by_stage_and_type"]:
        print("  (none)")
    for row in summary["crash_by_stage_and_type"]:
        print(f"  {row['stage']:<10} {row['error']:<28} {row['count']}")
    print("\nort_refused:")
    if not summary["ort_refused"]:
        print("  (none)")
    for row in summary["ort_refused"]:
        print(f"  {row['count']:>4}  {row['message']}")
    print("\nxla_only (ONNX agrees with JAX's own evaluation of the program; XLA:CPU's compiled "
          "program drops NaN in a max reduction, contracts an FMA across an overflow, divides "
          "by a broadcast divisor through its reciprocal, or rounds a dot's overflowing product "
          "before adding it):")
    if not summary.get("xla_only"):
        print("  (none)")
    for row in summary.get("xla_only", []):
        print(f"  seed {row['seed']}  {row['stage']}: {row['message'][:150]}")
    print("\nrefusals (stage, error, reason):")
    if not summary["refused_by_reason"]:
        print("  (none)")
    for row in summary["refused_by_reason"][:25]:
        print(f"  {row['count']:>4}  {row['stage']:<8} {row['error']:<20} {row['reason']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Differential fuzzing campaign: random valid programs "
                                 "checked against their own jax.jit through every nnxc stage.")
    ap.add_argument("--count", type=int, default=100, help="number of programs")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (instead of --count/--seed)")
    ap.add_argument("--out", required=True, help="folder for reproducers and summary.json")
    ap.add_argument("--stages", default=None,
                    help="comma-separated: none,default,fast,inference,onnx,roundtrip "
                         "(default: all but fast)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per program")
    ap.add_argument("--reduce", action="store_true", help="also write shrunk reproducers (*.min.py)")
    ap.add_argument("--verbose", "-v", action="store_true", help="one line per program")
    args = ap.parse_args(argv)

    sys.path.insert(0, TESTS)
    all_stages = ("none", "default", "fast", "inference", "onnx", "roundtrip")
    if args.stages is None:
        stages = tuple(s for s in all_stages if s != "fast")
    else:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        bad = [s for s in stages if s not in all_stages]
        if bad:
            print(f"fuzz.py: unknown stage(s) {', '.join(bad)}; choose from {', '.join(all_stages)}",
                  file=sys.stderr)
            return 2
    if args.count < 1 or args.jobs < 1 or args.timeout < 1:
        print("fuzz.py: --count, --jobs and --timeout must be positive", file=sys.stderr)
        return 2
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            print(f"fuzz.py: --seeds takes comma-separated integers, not {args.seeds!r}", file=sys.stderr)
            return 2
        if not seeds:
            print("fuzz.py: --seeds lists no seed", file=sys.stderr)
            return 2
        args.count = len(seeds)
    else:
        seeds = list(range(args.seed, args.seed + args.count))
    os.makedirs(args.out, exist_ok=True)

    records = []

    def on_result(rec):
        records.append(rec)
        if rec["program"] is None and any(o["error"] == "ProcessDied" for o in rec["outcomes"]):
            _write_died(rec, args.out)
        bad = [o for o in rec["outcomes"] if o["kind"] != "ok"]
        if args.verbose or any(o["kind"] in FAIL_KINDS for o in bad):
            what = ", ".join(f"{o['stage']}:{o['kind']}{'(' + o['error'] + ')' if o['error'] else ''}"
                             for o in bad) or "ok"
            print(f"[{len(records):>5}/{args.count}] seed {rec['seed']:<7} {rec.get('program') or '?':<8} {what}",
                  flush=True)
        elif len(records) % 50 == 0:
            print(f"[{len(records):>5}/{args.count}] ...", flush=True)

    pool = Pool(args.jobs, stages, args.out, args.timeout, args.reduce)
    try:
        pool.run(seeds, on_result)
    except KeyboardInterrupt:
        print("interrupted: summarizing what finished", file=sys.stderr)
    finally:
        pool.close()
    records.sort(key=lambda r: r["seed"])
    summary = summarize(records, stages)
    summary.update(seeds=f"{seeds[0]}..{seeds[-1]}" if args.seeds is None else seeds, count=args.count,
                   finished=len(records))
    _atomic_write(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    print(f"\nreproducers and summary.json in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
