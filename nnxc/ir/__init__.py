"""The graph IR: types, graph classes, text printer/parser, verifier, networkx view, and
views for people and tools: JSON, Graphviz DOT, an interactive HTML page, graph diffs."""
from .attrs import DType, EnumVal, Record, SymDim
from .changes import GraphDiff, diff
from .graph import Elided, Graph, Node, Region, Value, Variable
from .jsonio import IRJsonError, from_json, to_json
from .parser import ElidedConstantError, IRParseError, parse
from .printer import print_graph, write_text
from .types import DimExpr, TensorType, parse_dim
from .verify import verify
from . import fused_ops  # noqa: E402,F401 - the nnxc.* ops' shape rules, beside the core ops
from . import mesh_ops  # noqa: E402,F401 - shard_map's and its collectives' shape rules
from .view import to_dot, to_html

__all__ = ["DType", "EnumVal", "Record", "SymDim", "Elided", "Graph", "Node", "Region", "Value",
           "Variable", "IRParseError", "ElidedConstantError", "parse", "print_graph", "write_text",
           "TensorType", "DimExpr", "parse_dim", "verify",
           "to_json", "from_json", "IRJsonError", "to_dot", "to_html", "diff", "GraphDiff"]
