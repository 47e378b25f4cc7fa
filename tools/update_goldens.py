"""Regenerate every golden file the tests compare against, and suggest CHECK lines.

Kinds of goldens (all by default; review the diff before committing: a changed golden
means the IR of a model changed):

  ir      tests/golden/<name>.ir             the IR of the small models in tests/zoo.py (GOLDEN)
  dot     tests/golden/<name>.dot            their Graphviz view, for those that have one
                                             (tests/test_views.py)
  passes  tests/golden_passes/<name>.{before,after}.ir
                                             fusion pipelines (GOLDEN in tests/test_passes_fusion.py);
                                             computed float constants are compared masked, so a
                                             file that differs only there is kept

FileCheck tests (tests/ir/*.ir) are written by hand; ``--checks FILE`` prints, for each case
and RUN line, CHECK lines that pin the whole result, to paste and trim.

    .venv/bin/python tools/update_goldens.py [--kind ir,dot,passes] [--dry-run] [NAME ...]
    .venv/bin/python tools/update_goldens.py --checks tests/ir/fuse-softmax.ir
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)
KINDS = ("ir", "dot", "passes")


def _zoo_goldens() -> dict:
    """path -> (function giving its text, masking function or None), for kinds ir and dot."""
    import zoo
    from nnxc.ir import to_dot
    out = {}
    for name in zoo.GOLDEN:
        out[("ir", name)] = [(os.path.join(zoo.GOLDEN_DIR, f"{name}.ir"), lambda n=name: zoo.golden_text(n))]
    for name in zoo.GOLDEN:
        path = os.path.join(zoo.GOLDEN_DIR, f"{name}.dot")
        if os.path.exists(path):  # tests/test_views.py pins the DOT of these
            out[("dot", name)] = [(path, lambda n=name: to_dot(zoo.trace_golden(n)))]
    return out


def _pass_goldens() -> dict:
    import test_passes_fusion as tpf
    out = {}
    for name in tpf.GOLDEN:
        texts = functools.cache(functools.partial(_pass_texts, tpf, name))  # traced once
        out[("passes", name)] = [
            (os.path.join(tpf.GOLDEN_DIR, f"{name}.{which}.ir"), lambda w=which, t=texts: t()[w])
            for which in ("before", "after")]
    return out


def _pass_texts(tpf, name: str) -> dict[str, str]:
    """What test_golden_before_and_after compares: the traced and optimized IR text."""
    import nnxc
    factory, specs, pipeline = tpf.GOLDEN[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g = nnxc.trace(factory(), *specs, name=name)
    return {"before": g.text(locs=False), "after": nnxc.optimize(g, pipeline).text(locs=False)}


def _same(kind: str, old: str, new: str) -> bool:
    if kind == "passes":  # the test masks float constants that passes compute
        from test_passes_fusion import mask_computed
        return mask_computed(old) == mask_computed(new)
    return old == new


def update(kinds, names, dry_run: bool = False) -> int:
    """Write the goldens of ``kinds`` (only ``names``, when given); returns how many differ."""
    goldens = {}
    if {"ir", "dot"} & set(kinds):
        goldens.update(_zoo_goldens())
    if "passes" in kinds:
        goldens.update(_pass_goldens())
    goldens = {k: v for k, v in goldens.items() if k[0] in kinds}
    known = sorted({name for _, name in goldens})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown golden(s) {', '.join(unknown)}; known: {', '.join(known)}")
    changed = 0
    for (kind, name), files in goldens.items():
        if names and name not in names:
            continue
        for path, make in files:
            text = make()
            old = open(path).read() if os.path.exists(path) else None
            rel = os.path.relpath(path)
            if old is not None and _same(kind, old, text):
                print(f"unchanged  {rel}")
                continue
            changed += 1
            if dry_run:
                print(f"{'differs' if old is not None else 'missing'}    {rel}")
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)  # atomic: a crash never leaves half a golden
            print(f"{'updated' if old is not None else 'created'}    {rel}")
    return changed


def suggest_checks(path: str) -> str:
    """CHECK lines pinning the result of every case and RUN line of a FileCheck file."""
    from test_filecheck import pipeline_text, read_cases, run_case
    out = []
    for case in read_cases(path):
        for _, pipeline in case.runs:
            before, after = run_case(case, pipeline)
            head = f"# case {case.index} (line {case.line})"
            title = f": {case.title}" if case.title else ""
            note = "" if after != before else "   (unchanged: pin what must NOT happen with CHECK-NOT)"
            out.append(f"{head}{title}, RUN: {pipeline_text(pipeline)}{note}")
            lines = after.rstrip("\n").split("\n")
            out.append(f"# CHECK: {lines[0]}")
            out.extend(f"# CHECK-NEXT: {line.strip()}" for line in lines[1:])
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("names", nargs="*", help="goldens to write (default: all)")
    p.add_argument("--kind", default=",".join(KINDS),
                   help=f"comma-separated kinds to write: {', '.join(KINDS)} (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing; list the goldens that differ (exit 1 if any)")
    p.add_argument("--checks", metavar="FILE",
                   help="print suggested CHECK lines for a tests/ir FileCheck file and exit")
    args = p.parse_args(argv)
    if args.checks:
        if not os.path.exists(args.checks):
            p.error(f"no such file: {args.checks}")
        from test_filecheck import FileCheckError
        try:
            print(suggest_checks(args.checks))
        except FileCheckError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    kinds = [k for k in args.kind.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        p.error(f"unknown kind(s) {', '.join(bad) or '(none)'}; use {', '.join(KINDS)}")
    try:
        changed = update(kinds, args.names, args.dry_run)
    except ValueError as e:
        p.error(str(e))
    return 1 if args.dry_run and changed else 0


if __name__ == "__main__":
    sys.exit(main())
