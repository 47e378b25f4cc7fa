"""The decorator every rule table uses: ``@rule("op", ...)`` puts a function in the table."""
from __future__ import annotations

from typing import Callable


def registrar(table: dict) -> Callable:
    """``rule = registrar(TABLE)``; then ``@rule("add", "sub")`` registers a function for both ops."""
    def rule(*ops: str):
        def register(fn):
            for op in ops:
                table[op] = fn
            return fn
        return register
    return rule
