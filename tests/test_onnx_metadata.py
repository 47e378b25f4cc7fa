"""ONNX metadata: every node names the module it came from (``namespace``, as torch.onnx
writes it, for Model Explorer's layer tree; ``nnxc.path``, ``nnxc.class``, ``nnxc.loc``),
the model says what produced it, and initializers keep variable paths after -O inference.
Exported through the real ``nnxc`` command."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import nnxc

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def export(tmp_path, spec: str, *argv: str) -> onnx.ModelProto:
    out = tmp_path / (spec.split(":")[-1] + ".onnx")
    r = cli_inprocess.run("export", os.path.join(EXAMPLES, spec), *argv, "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    return onnx.load(str(out))


def all_nodes(graph, depth: int = 0):
    """(depth, node) for every node of ``graph`` and of the Loop / If bodies inside it."""
    for node in graph.node:
        yield depth, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g, depth + 1)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_nodes(g, depth + 1)


def props(node) -> dict:
    return {p.key: p.value for p in node.metadata_props}


def traced(name: str, factory: str, *specs: str, pipeline: str | None = None):
    sys.path.insert(0, EXAMPLES)
    try:
        module = __import__(name)
    finally:
        sys.path.remove(EXAMPLES)
    model = getattr(module, factory)()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g = nnxc.trace(model, *specs)
    return model, g, (nnxc.optimize(g, pipeline) if pipeline else g)


def namespace(graph_name: str, path: str) -> str:
    """The module path as torch.onnx's namespace: levels joined by "/" under the graph."""
    parts = []
    for p in path.split(".") if path else []:
        if p.isdigit() and parts:
            parts[-1] += "." + p
        else:
            parts.append(p)
    return "/".join([graph_name, *parts])


def test_every_gpt_node_names_its_module_and_initializers_keep_variable_paths(tmp_path):
    model = export(tmp_path, "gpt.py:gpt", "-i", "tokens:i32[B,8]", "--eval", "-O", "inference")
    _, g, opt = traced("gpt", "gpt", "i32[B,8]", pipeline="inference")
    nodes = [n for _, n in all_nodes(model.graph)]
    assert len(nodes) > 50
    missing = [n.name for n in nodes if "namespace" not in props(n)]
    assert missing == []  # 100 %
    # namespaces are exactly the IR nodes' module paths (the graph's name at top level)
    got = {props(n)["namespace"] for n in nodes}
    want = {namespace(opt.name, node.path or "") for node in opt.walk()}
    assert got == want
    for n in nodes:
        p = props(n)
        assert p["namespace"] == namespace("GPT", p["nnxc.path"])
    by_path = {}
    for n in nodes:
        by_path.setdefault(props(n)["nnxc.path"], []).append(props(n))
    classes = g.meta["module_types"]
    for path, ps in by_path.items():
        assert {p["nnxc.class"] for p in ps} == {classes.get(path, "GPT")}, path
    assert {p["nnxc.class"] for p in by_path["blocks.1.attn"]} == {"MultiHeadAttention"}
    # source lines point into the model's own file
    gpt_lines = open(os.path.join(EXAMPLES, "gpt.py")).read().splitlines()
    locs = {p["nnxc.loc"] for ps in by_path.values() for p in ps if "nnxc.loc" in p}
    assert locs and all(loc.rsplit(":", 1)[0].endswith("examples/gpt.py") for loc in locs)
    assert all(1 <= int(loc.rsplit(":", 1)[1]) <= len(gpt_lines) for loc in locs)
    attn_locs = {p["nnxc.loc"] for p in by_path["blocks.0.attn"] if "nnxc.loc" in p}
    assert any("self.attn(" in gpt_lines[int(loc.rsplit(":", 1)[1]) - 1] for loc in attn_locs)
    # the prelude (shapes of symbolic dims) belongs to the graph, not to a module
    shapes = [props(n) for n in nodes if n.op_type == "Shape"]
    assert shapes and all(p["namespace"] == "GPT" and p["nnxc.path"] == "" for p in shapes)
    # initializers after -O inference: variable paths, or <path>.folded, with the variables' values
    paths = {v.path: v for v in g.variables}
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
               if np.prod(i.dims) > 64}
    assert weights
    for name, value in weights.items():
        base = name.removesuffix(".folded")
        assert base in paths, name
        if name == base:
            np.testing.assert_array_equal(value, np.asarray(paths[name].data))
    assert {"tok.embedding", "head.kernel", "blocks.0.attn.query.kernel", "blocks.1.down.kernel"} <= set(weights)
    assert not any(n.startswith("c") and n[1:].isdigit() for n in weights)


def test_nodes_inside_loop_bodies_carry_their_modules(tmp_path):
    model = export(tmp_path, "scan_gpt.py:scan_gpt", "-i", "tokens:i32[B,8]", "--eval")
    _, g, _ = traced("scan_gpt", "scan_gpt", "i32[B,8]")
    nodes = list(all_nodes(model.graph))
    inner = [n for depth, n in nodes if depth > 0]
    assert inner and all("namespace" in props(n) for _, n in nodes)
    loops = [n for _, n in nodes if n.op_type == "Loop"]
    assert loops
    scan = next(node for node in g.walk() if node.op == "scan")
    for loop in loops:  # the Loop is the scan node, not the last node of its body
        assert props(loop)["nnxc.path"] == (scan.path or "")
    body_paths = {props(n)["nnxc.path"] for n in inner}
    region_paths = {node.path or "" for node in scan.regions[0].nodes}
    assert region_paths <= body_paths
    assert "ScanGPT/blocks/attn/query" in {props(n)["namespace"] for n in inner}
    assert {props(n)["nnxc.class"] for n in inner if props(n)["nnxc.path"] == "blocks.attn"} == \
        {g.meta["module_types"]["blocks.attn"]}


def test_model_metadata_names_producer_class_and_opset_choice(tmp_path):
    from nnxc.backends.onnx.native import default_opset
    model = export(tmp_path, "mlp.py:mlp", "-i", "x:f32[B,64]", "--eval")
    assert model.producer_name == "nnxc" and model.producer_version == nnxc.__version__
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nnxc.class"] == "MLP" and meta["nnxc.graph"] == "MLP" and meta["nnxc.frontend"] == "nnx"
    assert meta["nnxc.opset"] == str(model.opset_import[0].version) == str(default_opset())
    assert meta["nnxc.opset_choice"].startswith("default: the newest at which onnxruntime ")
    model = export(tmp_path, "mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "--opset", "17")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nnxc.opset"] == "17" == str(model.opset_import[0].version)
    assert meta["nnxc.opset_choice"].startswith("requested (nnxc exports 13..")
    onnx.checker.check_model(model, full_check=True)


def test_batchnorm_folded_weights_are_named_after_the_layer_kernel(tmp_path):
    model = export(tmp_path, "mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "-O", "inference")
    mlp, g, _ = traced("mlp", "mlp", "f32[B,64]")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert {"linear1.kernel.folded", "linear2.kernel.folded", "head.kernel"} <= set(weights)
    data = {v.path: np.asarray(v.data) for v in g.variables if v.kind in ("Param", "BatchStat")}
    scale = data["bn1.scale"] / np.sqrt(data["bn1.var"] + mlp.bn1.epsilon)
    np.testing.assert_allclose(weights["linear1.kernel.folded"], data["linear1.kernel"] * scale, rtol=1e-6)
    np.testing.assert_array_equal(weights["head.kernel"], data["head.kernel"])
    # graph inputs and outputs keep the user's names
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["output"]
    (matmul,) = [n for n in model.graph.node if "linear1.kernel.folded" in n.input]
    assert props(matmul)["nnxc.path"] == "linear1" and props(matmul)["nnxc.class"] == "Linear"


def test_python_api_export_is_deterministic_with_metadata(tmp_path):
    _, g, opt = traced("cnn", "cnn", "f32[B,16,16,1]", pipeline="inference")
    a = nnxc.export_onnx(opt).SerializeToString()
    b = nnxc.export_onnx(opt).SerializeToString()
    assert a == b
    model = onnx.load_from_string(a)
    assert all("namespace" in props(n) for _, n in all_nodes(model.graph))
    assert "conv1.kernel.folded" in {i.name for i in model.graph.initializer}


@pytest.mark.parametrize("path, levels", [("", []), ("blocks.0.attn", ["blocks.0", "attn"]),
                                          ("layers.12", ["layers.12"]), ("a.b", ["a", "b"])])
def test_namespace_levels_keep_list_indices_with_their_container(path, levels):
    from nnxc.backends.onnx.export import _levels
    assert (_levels(path) if path else []) == levels
