"""Benchmark the HTML view: generation time and page size of the example decoder
(examples/gpt.py, ``gpt(depth=N, d_model=256)``) by depth, which must grow linearly with
the nodes, and the browser's load and render time for the largest page.

    .venv/bin/python tools/bench_view.py [--depths 1,2,4,8,16,32] [--no-browser]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import nnxc  # noqa: E402
import zoo  # noqa: E402 - needs the path above
from nnxc.ir import to_html  # noqa: E402


def decoder(depth: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return nnxc.trace(zoo.example_module("gpt").gpt(depth=depth, d_model=256), "i32[B,8]")


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="1,2,4,8,16,32")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium load time")
    args = p.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    print(f"{'depth':>5} {'nodes':>6} {'variables':>9} {'html ms':>8} {'µs/node':>8} {'KiB':>7} {'bytes/node':>10}")
    rows, largest = [], None
    for depth in depths:
        g = decoder(depth)
        nodes = sum(1 for _ in g.walk())
        seconds, page = best_of(lambda: to_html(g), args.repeat)
        size = len(page.encode())
        rows.append((nodes, seconds, size))
        print(f"{depth:>5} {nodes:>6} {len(g.variables):>9} {seconds * 1e3:>8.1f} {seconds / nodes * 1e6:>8.1f} "
              f"{size / 1024:>7.0f} {size / nodes:>10.0f}")
        largest = (depth, nodes, page)
    if len(rows) > 1:
        (n0, t0, s0), (n1, t1, s1) = rows[0], rows[-1]
        print(f"growth from {n0} to {n1} nodes (x{n1 / n0:.1f}): time x{t1 / t0:.1f}, size x{s1 / s0:.1f}")
    if args.no_browser or largest is None:
        return 0
    from chromium import Browser, find_chromium
    binary, why = find_chromium(install=True)
    if binary is None:
        print(f"browser: skipped ({why})")
        return 0
    depth, nodes, page = largest
    with tempfile.TemporaryDirectory() as tmp, Browser(binary) as b:
        path = os.path.join(tmp, "view.html")
        with open(path, "w") as f:
            f.write(page)
        url = "file://" + path
        loads = [b.open(url) for _ in range(args.repeat)]
        render = b.eval("nnxcView.renderMs")
        visible = b.eval("nnxcView.visible()")
        t0 = time.perf_counter()
        b.eval("document.querySelector('#expand').click()")
        expand_all = time.perf_counter() - t0
        shown = b.eval("nnxcView.visible()")
        errors = b.errors()
    print(f"browser (depth {depth}, {nodes} nodes): load {min(loads) * 1e3:.0f} ms to the load event, "
          f"first render {render:.0f} ms, {visible} items collapsed; expand all {expand_all * 1e3:.0f} ms "
          f"for {shown} items; console errors: {len(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
