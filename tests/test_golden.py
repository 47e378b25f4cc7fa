"""Golden IR text: tracing the small models in zoo.GOLDEN gives exactly tests/golden/<name>.ir,
and every golden file parses, verifies, prints back to itself and runs.

When the IR changes on purpose, regenerate and review:
    .venv/bin/python tools/update_goldens.py
"""
from __future__ import annotations

import difflib
import os

import numpy as np
import pytest

import nnxc
import zoo
from nnxc.ir import parse, verify

UPDATE = "run `.venv/bin/python tools/update_goldens.py` and review the diff"


def read_golden(name: str) -> str:
    path = os.path.join(zoo.GOLDEN_DIR, f"{name}.ir")
    if not os.path.exists(path):
        pytest.fail(f"missing golden {path}; {UPDATE}")
    with open(path) as f:
        return f.read()


def test_every_golden_file_has_a_model():
    files = sorted(f[:-3] for f in os.listdir(zoo.GOLDEN_DIR) if f.endswith(".ir"))
    assert files == sorted(zoo.GOLDEN), f"golden files and zoo.GOLDEN disagree; {UPDATE}"


@pytest.mark.parametrize("name", sorted(zoo.GOLDEN))
def test_trace_matches_golden(name):
    want, got = read_golden(name), zoo.golden_text(name)
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            f"golden/{name}.ir", "traced", n=1))
        pytest.fail(f"IR of {name!r} differs from tests/golden/{name}.ir; if intended, "
                    f"{UPDATE}\n{diff}")


@pytest.mark.parametrize("name", sorted(zoo.GOLDEN))
def test_golden_parses_verifies_and_prints_back(name):
    text = read_golden(name)
    g = parse(text)
    verify(g)
    assert str(g) == text
    assert g.text(locs=False) == text


@pytest.mark.parametrize("name", sorted(zoo.GOLDEN))
def test_golden_runs_like_the_traced_graph(name):
    """The golden text is the whole program: with the model's weights it computes the same."""
    traced = zoo.trace_golden(name)
    parsed = parse(read_golden(name))
    args = zoo.random_inputs(zoo.GOLDEN[name][1], batch=3)
    want, want_state = nnxc.compile(traced).apply(traced.state(), *args)
    got, got_state = nnxc.compile(parsed, traced.state()).apply(traced.state(), *args)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert sorted(got_state) == sorted(want_state)
    for path in want_state:
        np.testing.assert_array_equal(zoo.as_numpy(got_state[path]), zoo.as_numpy(want_state[path]),
                                      err_msg=path)
