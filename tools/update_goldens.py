"""Regenerate the golden IR files in tests/golden/ from the models in tests/zoo.py (GOLDEN).

Review the diff before committing: a changed golden means the IR of a model changed.

    .venv/bin/python tools/update_goldens.py [NAME ...]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zoo  # noqa: E402 - needs the path above


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*",
                   help=f"goldens to write (default: all of {', '.join(zoo.GOLDEN)})")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in zoo.GOLDEN]
    if unknown:
        p.error(f"unknown golden(s) {', '.join(unknown)}; known: {', '.join(zoo.GOLDEN)}")
    os.makedirs(zoo.GOLDEN_DIR, exist_ok=True)
    for name in args.names or list(zoo.GOLDEN):
        path = os.path.join(zoo.GOLDEN_DIR, f"{name}.ir")
        text = zoo.golden_text(name)
        old = open(path).read() if os.path.exists(path) else None
        if old == text:
            print(f"unchanged  {os.path.relpath(path)}")
            continue
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: a crash never leaves half a golden
        print(f"{'updated' if old is not None else 'created'}    {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
