"""The graph IR: types, graph classes, text printer/parser, verifier, networkx view."""
from .attrs import DType, EnumVal, Record, SymDim
from .graph import Elided, Graph, Node, Region, Value, Variable
from .parser import IRParseError, parse
from .printer import print_graph
from .types import TensorType
from .verify import verify

__all__ = ["DType", "EnumVal", "Record", "SymDim", "Elided", "Graph", "Node", "Region", "Value",
           "Variable", "IRParseError", "parse", "print_graph", "TensorType", "verify"]
