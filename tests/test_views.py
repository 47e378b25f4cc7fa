"""Views of the IR: JSON round trip, golden DOT, diffs, the CLI formats, and the HTML page in
a real headless Chromium (loads from file:// offline, modules expand, nodes show details).

Regenerate the golden DOT files after reviewing a change:  NNXC_UPDATE_GOLDENS=1 pytest tests/test_views.py -k dot
Keep the screenshots somewhere:  NNXC_SCREENSHOTS=/tmp/shots pytest tests/test_views.py -k chromium -s
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxc
import zoo
from nnxc.ir import DType, EnumVal, Graph, IRJsonError, Node, Record, SymDim, TensorType, Value
from nnxc.ir import diff, from_json, to_dot, to_html, to_json

# -- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, mode", zoo.CASES)
def test_json_round_trips_every_zoo_model(name, mode):
    g = zoo.trace(name, zoo.make(name, train=mode == "train"), train=mode == "train")
    text = to_json(g)
    doc = json.loads(text)
    assert doc["schema"] == "nnxc-ir" and doc["version"] == 1
    assert from_json(text).text() == g.text()
    assert to_json(from_json(text)) == text


def _functions():
    def tree_out(x, y):
        return {"sum": x + y, "parts": (x * 2, [jnp.tanh(y)])}

    def loops(x, n):
        c, ys = jax.lax.scan(lambda c, xs: (c * xs + 1.0, jnp.cumsum(c)), x[0], x)
        w = jax.lax.fori_loop(0, 3, lambda i, v: v + i, c)
        return jax.lax.cond(n > 0, lambda v: v * 2, lambda v: v - 1, w), ys

    def consts(x):
        return x * np.arange(4, dtype=np.float32) + np.float32(np.inf), x + np.ones((40,), np.float32)[:4]

    return [(tree_out, ("f32[B,3]", "f32[B,3]")), (loops, ("f32[4,3]", "i32[]")), (consts, ("f32[4]",))]


@pytest.mark.parametrize("fn, specs", _functions(), ids=lambda x: getattr(x, "__name__", ""))
def test_json_round_trips_trees_regions_and_constants(fn, specs):
    g = nnxc.trace(fn, *specs)
    assert from_json(to_json(g)).text() == g.text()


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, float("inf"), float("nan"), "a\"b\n", (), (1,), (((1,), (0,)), ((), ())),
    DType("bf16"), SymDim("2*B+1"), EnumVal("Precision", "HIGHEST"),
    Record("ConvDimensionNumbers", (("lhs_spec", (0, 3, 1, 2)), ("mode", EnumVal("M", "A")))),
])
def test_json_attributes_are_lossless(value):
    g = Graph("g", inputs=[Value(TensorType(("B",), "f32"), "x")])
    g.nodes.append(Node("my_op", g.inputs, [TensorType(("B",), "f32")], {"a": value}))
    g.outputs = g.nodes[0].outputs
    back = from_json(to_json(g)).nodes[0].attrs["a"]
    assert repr(back) == repr(value) and type(back) is type(value)


def test_json_errors_name_the_place():
    g = nnxc.trace(lambda x: jnp.sin(x) + 1.0, "f32[3]")
    doc = json.loads(to_json(g))
    doc["nodes"][1]["inputs"][0] = "nope"
    with pytest.raises(IRJsonError, match=r"nodes\[1\]\.inputs\[0\]: undefined value 'nope'"):
        from_json(json.dumps(doc))
    doc["version"] = 99
    with pytest.raises(IRJsonError, match="version 99"):
        from_json(json.dumps(doc))


# -- DOT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_mlp", "tiny_scan"])
def test_dot_matches_golden(name):
    text = to_dot(zoo.trace_golden(name))
    path = os.path.join(zoo.GOLDEN_DIR, f"{name}.dot")
    if os.environ.get("NNXC_UPDATE_GOLDENS") == "1":
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: write it with NNXC_UPDATE_GOLDENS=1 pytest tests/test_views.py -k dot")
    with open(path) as f:
        assert text == f.read(), f"{path} changed: review, then regenerate with NNXC_UPDATE_GOLDENS=1"
    if shutil.which("dot"):  # Graphviz, when installed, must accept it
        subprocess.run(["dot", "-Tsvg", "-o", os.devnull, path], check=True)


# -- diffs -----------------------------------------------------------------------------------

def test_diff_reports_fusion_by_module():
    g = zoo.trace("gpt", zoo.make("gpt"))
    assert not diff(g, nnxc.ir.parse(g.text())).changed  # renumbering or re-parsing is no change
    d = diff(g, nnxc.optimize(g, "inference"))
    assert d.changed and d.nodes_after < d.nodes_before
    by_module = {m.module: m for m in d.modules}
    assert "nnxc.layer_norm" in by_module["blocks.0.ln1"].fused_into
    assert len(d.variables_removed) == len(g.variables)  # frozen into constants
    assert "blocks.0.ln1" in str(d)


# -- the CLI ---------------------------------------------------------------------------------

def test_cli_writes_every_format(tmp_path, capsys):
    from nnxc.cli import main
    spec = os.path.join(zoo.EXAMPLES, "mlp.py") + ":mlp"
    for fmt in ("json", "dot", "html"):
        out = tmp_path / f"m.{fmt}"
        assert main(["ir", spec, "-i", "x:f32[B,64]", "-q", "-o", str(out)]) == 0  # format from the suffix
        assert out.stat().st_size > 1000
    assert from_json((tmp_path / "m.json").read_text()).name
    assert main(["ir", spec, "-i", "x:f32[B,64]", "-q", "--passes", "inference", "--diff"]) == 0
    text = capsys.readouterr().out
    assert "fold-all-constants" in text and "nodes" in text
    assert main(["ir", spec, "-i", "x:f32[B,64]", "-q", "--passes", "fast", "--diff", "-f", "html", "-o", str(tmp_path / "d.html")]) == 0
    assert "before / after" in (tmp_path / "d.html").read_text()
    assert main(["ir", spec, "-i", "x:f32[B,64]", "-q", "--diff", "-f", "json"]) == 2
    assert main(["ir", spec, "-i", "x:f32[B,64]", "-q", "--passes", "no-such-pass"]) == 2


# -- the HTML page ---------------------------------------------------------------------------

def test_html_is_self_contained_and_linear():
    g = zoo.trace("gpt", zoo.make("gpt"))
    page = to_html(g)
    for needle in ("http://", "https://", "<link", "<script src", "@import", "url(http"):
        assert needle not in page
    small = len(to_html(nnxc.trace(zoo.example_module("gpt").gpt(depth=1), "i32[B,8]")))
    big = len(to_html(nnxc.trace(zoo.example_module("gpt").gpt(depth=8), "i32[B,8]")))
    assert big < 9 * small  # grows with the nodes, not faster


def test_html_page_data_has_module_classes():
    from nnxc.ir.view.html import page_data
    g = zoo.trace("gpt", zoo.make("gpt"))
    data = page_data(g)
    by_path = {data["DT"][int(i)]: c for i, c in data["MC"].items()}
    assert by_path["blocks.0.attn"] == "MultiHeadAttention" and by_path["blocks.0"] == "Block"
    assert all(data["K"][int(i)] == "m" for i in data["MC"])
    assert "MultiHeadAttention" in to_html(g)
    assert {r[0]: r[8] for r in data["MT"]}["blocks.0.attn"] == "MultiHeadAttention"  # module table
    # labels stay the bare module names; a graph parsed from text has no classes and still works
    assert "MultiHeadAttention" not in data["L"]
    parsed = page_data(nnxc.ir.parse(g.text()))
    assert parsed["MC"] == {} and parsed["L"] == data["L"]


@pytest.fixture(scope="module")
def browser():
    from chromium import Browser, find_chromium
    binary, why = find_chromium(install=True)
    if binary is None:
        pytest.skip(why)
    with Browser(binary, width=1600, height=1000) as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the screenshots go: $NNXC_SCREENSHOTS (kept), else a pytest temporary folder."""
    keep = os.environ.get("NNXC_SCREENSHOTS")
    path = tmp_path_factory.mktemp("view-screenshots") if not keep else pathlib.Path(keep)
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {path}", file=sys.stderr)
    return path


def _item(b, label: str, cls: str = "card") -> int:
    i = b.eval(f"(() => {{ for (const e of document.querySelectorAll('.item.{cls}'))"
               f" if (nnxcView.D.L[+e.dataset.i] === {json.dumps(label)}) return +e.dataset.i; return -1; }})()")
    assert i >= 0, f"no visible {cls} {label!r}"
    return i


def test_html_page_in_chromium(browser, shots, tmp_path):
    b = browser
    page = tmp_path / "gpt.html"
    page.write_text(to_html(zoo.trace("gpt", zoo.make("gpt"))))
    b.open(page.as_uri())
    assert b.eval("document.querySelectorAll('#vp .item.card').length") >= 5
    cards = b.eval("[...document.querySelectorAll('#vp .item.card .cl')].map(e => e.textContent)")
    assert {"tok", "pos", "blocks", "ln_f", "head"} <= set(cards)
    b.screenshot(str(shots / "1-collapsed.png"))
    # expand a module with a real click: its children appear inside its box
    b.click_on(f'.item[data-i="{_item(b, "blocks")}"] .cl')
    assert b.eval("document.querySelectorAll('#vp .box').length") == 1
    classes = "[...document.querySelectorAll('#vp .mc')].map(e => e.textContent)"
    assert "Block" in b.eval(classes)  # each module's class shows next to its name
    b.screenshot(str(shots / "1b-blocks.png"))
    b.click_on(f'.item[data-i="{_item(b, "blocks.0")}"] .cl')
    assert "MultiHeadAttention" in b.eval(classes)
    b.click_on(f'.item[data-i="{_item(b, "attn")}"] .mc')  # the class tag expands the module too
    assert "MultiHeadAttention" in b.eval("document.querySelector('#details').innerText")
    b.click_on(f'.item[data-i="{_item(b, "query")}"] .cl')
    # click a node: its op, attributes and source line show in the side panel
    node = _item(b, "dot_general", "node")
    b.click_on(f'.item[data-i="{node}"] .op')
    details = b.eval("document.querySelector('#details').innerText")
    assert "dot_general" in details and "dimension_numbers" in details and "gpt.py" in details
    b.screenshot(str(shots / "2-node.png"))
    # click its weight: the variable with its statistics
    b.click_on(f'.item[data-i="{node}"] .chip')
    details = b.eval("document.querySelector('#details').innerText")
    assert "blocks.0.attn.query.kernel" in details and "Param" in details and "mean" in details
    b.screenshot(str(shots / "3-variable.png"))
    # search by module path, pick the first result
    b.click_on("#q")
    b.call("Input.insertText", session=True, text="ln_f")
    time.sleep(0.3)
    assert b.eval("document.querySelectorAll('#results .r').length") >= 1
    b.click_on("#results .r")
    assert "ln_f" in b.eval("document.querySelector('#details').innerText")
    b.click_on('.tabs button[data-tab="modules"]')
    assert "blocks.0" in b.eval("document.querySelector('#modules').innerText")
    b.screenshot(str(shots / "4-modules.png"))
    assert b.errors() == []
    assert [u for u in b.requests() if not u.startswith("file://")] == []


def test_html_32_layer_decoder_renders_collapsed_quickly(browser, shots, tmp_path):
    gpt = zoo.example_module("gpt").gpt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g = nnxc.trace(gpt(depth=32, d_model=256), "i32[B,8]")
    page = tmp_path / "gpt32.html"
    page.write_text(to_html(g))
    seconds = browser.open(page.as_uri())
    render_ms = browser.eval("nnxcView.renderMs")
    assert seconds < 2.0 and render_ms < 2000, (seconds, render_ms)
    assert browser.eval("nnxcView.visible()") < 40  # collapsed: a screenful, not 2,900 nodes
    browser.click_on(f'.item[data-i="{_item(browser, "blocks")}"] .cl')
    browser.screenshot(str(shots / "5-gpt32-blocks.png"))
    assert browser.errors() == []
