"""Views of a Graph for people: Graphviz DOT and a self-contained interactive HTML page."""
from .dot import to_dot
from .html import page_data, to_html

__all__ = ["to_dot", "to_html", "page_data"]
