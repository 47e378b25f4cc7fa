"""Model specs (``file.py:factory``), input specs and tracing for the CLI."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys

from ..errors import NnxcError, SpecError

# -- model and input specs ---------------------------------------------------------

def load_factory(spec: str):
    """``path/to/file.py:factory`` or ``package.module:factory`` -> the factory callable."""
    if ":" not in spec:
        raise SpecError(f"bad model spec {spec!r}: expected path/to/file.py:factory or "
                        "package.module:factory")
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise SpecError(f"bad model spec {spec!r}: expected path/to/file.py:factory")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise SpecError(f"model file not found: {target}")
        folder = os.path.dirname(os.path.abspath(target))
        name = "nnxc_user_" + os.path.splitext(os.path.basename(target))[0]
        mod_spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module  # dataclass-based code (Linen) looks its module up here
        sys.path.insert(0, folder)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's module failed to import
            raise NnxcError(f"importing {target} failed: {_short_exc(e)}") from None
        finally:
            sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise SpecError(f"cannot import module {target!r}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module.__name__)
        raise SpecError(f"{target} has no factory {attr!r}" + (f" (found: {', '.join(names)})" if names else ""))
    return factory


def _short_exc(e: BaseException) -> str:
    import traceback
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "site-packages" not in f.filename and not f.filename.startswith(own)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def parse_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """``["x:f32[B,784]", "f32[3]"]`` -> (names, specs); names may be empty strings."""
    from ..frontend.specs import parse_spec
    names, specs = [], []
    for item in items:
        name, sep, spec = item.partition(":")
        if not sep or "[" in name:
            name, spec = "", item
        if name and not name.isidentifier():
            raise SpecError(f"bad input {item!r}: the name {name!r} is not an identifier")
        parse_spec(spec)
        names.append(name)
        specs.append(spec.strip())
    return names, specs


def parse_kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"bad keyword {item!r}: expected name=value, e.g. deterministic=True")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_model(args):
    factory = load_factory(args.model)
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise NnxcError(f"factory {args.model} raised {_short_exc(e)}") from None
    return made


def trace_model(args, stages):
    from flax import nnx

    from ..frontend.trace import trace
    made = build_model(args)
    names, specs = parse_inputs(args.inputs)
    kwargs = parse_kwargs(args.kw)
    variables = None
    if isinstance(made, tuple) and len(made) == 2:
        made, variables = made
    if getattr(args, "eval", False) and isinstance(made, nnx.Module):
        made.eval()
    with stages.stage("trace"):
        try:
            if variables is not None:
                graph = trace(made, *specs, variables=variables, **kwargs)
            else:
                graph = trace(made, *specs, **kwargs)
        except NnxcError:
            raise
        except Exception as e:  # noqa: BLE001 - the model's own code failed on these inputs
            raise NnxcError(f"tracing {args.model} failed: {_short_exc(e)}") from None
    for want, v in zip(names, graph.inputs):
        if want and v.name != want:
            raise SpecError(f"input {want!r} does not match the model's argument {v.name!r} "
                            f"(inputs are positional: {', '.join(x.name for x in graph.inputs)})")
    _warn_training(graph)
    return graph


def _warn_training(graph) -> None:
    stats = [p for p, _ in graph.updates if graph.variable(p).kind in ("BatchStat", "batch_stats")]
    rng = sorted({n.path or "<top>" for n in graph.walk() if n.op in ("random_bits", "threefry2x32")})
    if stats or rng:
        parts = []
        if stats:
            parts.append(f"updates batch statistics ({', '.join(stats[:3])}{' ...' if len(stats) > 3 else ''})")
        if rng:
            parts.append(f"draws random numbers ({', '.join(rng[:3])})")
        print(f"nnxc: warning: the model runs in training mode: it {' and '.join(parts)}; "
              "pass --eval (NNX) or -k train=False / deterministic=True to export inference",
              file=sys.stderr)
