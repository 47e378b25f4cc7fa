"""``nnx.capture(model, nnx.Intermediate)`` (flax 0.12's way to collect sown values) traced
directly: the wrapper is a closure over the model, so it is traced as a function of the model
(whose state becomes variables) under the same capture, with paths as tracing the model names
them (``l1.kernel``)."""
from __future__ import annotations

from ..errors import SpecError

_CAPTURED = "_nnxc_captured_model"


def capture_parts(made) -> dict | None:
    """The parts of an ``nnx.capture(...)`` wrapper (flax 0.12): fn, module_instance,
    var_types, init, method_outputs; None for anything else."""
    if getattr(made, "__qualname__", "") != "capture.<locals>.wrapper" or \
            not str(getattr(made, "__module__", "")).startswith("flax."):
        return None
    code, cells = getattr(made, "__code__", None), getattr(made, "__closure__", None) or ()
    parts = {n: c.cell_contents for n, c in zip(getattr(code, "co_freevars", ()), cells)}
    return parts if {"fn", "module_instance", "var_types"} <= parts.keys() else None


def trace_capture(parts: dict, specs: list, kwargs: dict, method: str | None, source=None):
    import inspect

    from flax import nnx

    from .trace import trace
    module = parts["module_instance"]
    if module is None:
        raise SpecError("the factory returned nnx.capture of a function, which takes the model "
                        "as an argument nnxc cannot pass: return nnx.capture(model, ...) or "
                        "nnx.capture(model.method, ...)")
    fn = parts["fn"]
    if method is None:
        method = fn.__name__ if inspect.ismethod(fn) else "__call__"
    target = getattr(type(module), method, None)
    if not callable(target):
        raise SpecError(f"{type(module).__name__} has no method {method!r}")
    var_types, init, outputs = parts["var_types"], parts.get("init"), parts.get("method_outputs")

    def call(model, *args, **kw):
        return nnx.capture(getattr(model, method), *var_types, init=init,
                           method_outputs=outputs)(*args, **kw)

    try:  # argument names from the method's signature (the first one is the model)
        params = list(inspect.signature(target).parameters.values())[1:]
        call.__signature__ = inspect.Signature(
            [inspect.Parameter(_CAPTURED, inspect.Parameter.POSITIONAL_ONLY)] + params)
    except (TypeError, ValueError):
        pass
    cls = type(module).__name__
    graph = trace(call, module, *specs, name=cls, **(source or {}), **kwargs)
    _strip_prefix(graph, _CAPTURED)
    graph.meta.setdefault("module_types", {})[""] = cls
    graph.meta["capture"] = [t.__name__ for t in var_types]
    return graph


def _strip_prefix(graph, prefix: str) -> None:
    """Variables and module paths as tracing the model itself names them (``l1.kernel``)."""
    def strip(path: str) -> str:
        if path == prefix:
            return ""
        return path[len(prefix) + 1:] if path.startswith(prefix + ".") else path
    for var in graph.variables:
        var.path = strip(var.path)
        if var.value.name:
            var.value.name = strip(var.value.name)
    graph.updates = [(strip(p), v) for p, v in graph.updates]
    for node in graph.walk():
        node.path = strip(node.path or "")
    graph.meta["module_types"] = {strip(k): v for k, v in (graph.meta.get("module_types") or {}).items()}
