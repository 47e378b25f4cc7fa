"""Model specs (``file.py:factory``), input specs and tracing for the CLI."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys

from ..errors import NnxcError, NnxcWarning, SpecError

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
    hint = _TRACING_HINTS.get(type(e).__name__)
    if hint:  # JAX's own text is a page long: its first line, then what to do
        first = (str(e).splitlines() or [""])[0]
        return f"{type(e).__name__}{where}: {first}\n  {hint}"
    return f"{type(e).__name__}: {e}{where}"


# JAX errors of model code that needs concrete values where nnxc traces abstract ones
_TRACING_HINTS = {
    "TracerArrayConversionError": "the model turns a traced array into a NumPy array (np.asarray, "
                                  "np.array): use jnp.asarray, or compute it from constants outside "
                                  "__call__",
    "ConcretizationTypeError": "the model needs a concrete value (Python if/for/int() on an array): "
                               "use jnp.where / lax.cond / lax.fori_loop, or make it a static argument",
    "TracerBoolConversionError": "the model branches in Python on an array: use jnp.where or lax.cond",
    "TracerIntegerConversionError": "the model calls int() or indexes a Python list with an array: "
                                    "keep that value static",
}


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


# -- input data (-i NAME=FILE.npy) ---------------------------------------------------

class InputArg:
    """One positional model argument from ``-i``: a spec, data from a file, or both."""

    def __init__(self, name: str):
        self.name = name
        self.spec: str | None = None
        self.file: str | None = None
        self.data = None  # a numpy array when given as NAME=FILE


def is_data_item(item: str) -> bool:
    """``x=x.npy`` (data) rather than ``x:f32[B,4]`` (a spec)."""
    name, sep, _ = item.partition("=")
    return bool(sep) and name.strip().isidentifier()


def input_args(items: list[str]) -> list[InputArg]:
    """``-i`` items in argument order. ``NAME:SPEC`` / ``SPEC`` declare an argument;
    ``NAME=FILE.npy`` / ``NAME=FILE.npz[:KEY]`` give its data (and, without a spec, its
    dtype and shape). A name given both ways is one argument, at its first position."""
    args: list[InputArg] = []
    by_name: dict[str, InputArg] = {}
    for item in items:
        if is_data_item(item):
            name, _, path = item.partition("=")
            name = name.strip()
            arg = by_name.get(name)
            if arg is None:
                arg = by_name[name] = InputArg(name)
                args.append(arg)
            if arg.file is not None:
                raise SpecError(f"input {name!r} has data twice ({arg.file} and {path})")
            arg.file, arg.data = path, load_array(name, path)
            continue
        names, specs = parse_inputs([item])
        name, spec = names[0], specs[0]
        arg = by_name.get(name) if name else None
        if arg is None:
            arg = InputArg(name)
            args.append(arg)
            if name:
                by_name[name] = arg
        elif arg.spec is not None:
            raise SpecError(f"input {name!r} has two specs ({arg.spec} and {spec})")
        arg.spec = spec
    return args


def load_array(name: str, path: str):
    """The array ``NAME=FILE.npy`` or ``NAME=FILE.npz[:KEY]`` names (KEY defaults to NAME)."""
    import numpy as np
    file, key = path.rsplit(":", 1) if ".npz:" in path else (path, "")
    if not file:
        raise SpecError(f"bad input {name}={path}: expected NAME=FILE.npy or NAME=FILE.npz:KEY")
    if not os.path.isfile(file):
        raise SpecError(f"input file not found: {file}")
    try:
        data = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise SpecError(f"cannot read {file}: {str(e).splitlines()[0]}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            key = key or name
            if key not in data.files:
                raise SpecError(f"{file} has no array {key!r} (has: {', '.join(data.files)})")
            return data[key]
    if key:
        raise SpecError(f"{file} is a .npy file: it has no key {key!r}")
    return data


def fit_dtype(label: str, a, want):
    """``a`` as dtype ``want``: unchanged, converted with a warning when every value is exactly
    representable (numpy's default float64 / int64 for f32 / i32 inputs), else a SpecError."""
    import warnings

    import numpy as np
    want = np.dtype(want)
    if a.dtype == want:
        return a
    kind = lambda d: "f" if d.kind in "fc" or d.name == "bfloat16" else ("i" if d.kind in "iu" else d.kind)  # noqa: E731
    if kind(a.dtype) != kind(want):
        raise SpecError(f"{label}: {a.dtype} data for a {want} input; save the array as {want}")
    with np.errstate(all="ignore"), warnings.catch_warnings():  # overflow is checked below
        warnings.simplefilter("ignore")
        b = a.astype(want)
        back = b.astype(a.dtype)
    same = np.array_equal(back, a, equal_nan=True) if kind(want) == "f" else np.array_equal(back, a)
    if not same:
        differ = back != a
        if kind(want) == "f":
            differ &= ~(np.isnan(back) & np.isnan(a))
        where = tuple(int(i) for i in np.argwhere(differ)[0]) if a.ndim else ()
        raise SpecError(f"{label}: {a.dtype} value {a[where].item()!r} at index {where} is not exactly "
                        f"representable as {want}; convert the array yourself "
                        f"(np.asarray(x, np.{want.name}))")
    warnings.warn(f"{label}: {a.dtype} data converted to {want} (every value is exactly "
                  "representable)", NnxcWarning, stacklevel=2)
    return b


# -- building and tracing the model ---------------------------------------------------

def build_model(args, mesh=None):
    """Call the factory (inside ``mesh`` when given, so ``nnx.with_partitioning`` variables
    can be created sharded)."""
    factory = load_factory(args.model)
    try:
        with _mesh_context(mesh):
            made = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        hint = ""
        if mesh is None and "mesh" in str(e).lower():
            hint = " (nnxc compile --mesh AXES calls the factory inside a mesh)"
        raise NnxcError(f"factory {args.model} raised {_short_exc(e)}{hint}") from None
    return made


def _mesh_context(mesh):
    import contextlib
    if mesh is None:
        return contextlib.nullcontext()
    import jax
    return jax.set_mesh(mesh)


def parse_mutable(text: str | None):
    """``--mutable batch_stats,intermediates`` -> a list (``all`` -> True); None if not given."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isidentifier() for p in parts):
        raise SpecError(f"bad --mutable {text!r}: expected Linen collection names like "
                        "batch_stats,intermediates (or all)")
    return True if parts == ["all"] else parts


def trace_model(args, stages, mesh=None):
    """Build the model, trace it on the ``-i`` inputs and return the graph.

    Sets ``args.input_data``: the arrays given as ``-i NAME=FILE`` in graph input order
    (converted to the inputs' dtypes), or None when no data was given."""
    import jax
    from flax import nnx

    from ..frontend.trace import trace
    inputs = input_args(args.inputs)
    kwargs = parse_kwargs(args.kw)
    method = getattr(args, "method", None)
    mutable = parse_mutable(getattr(args, "mutable", None))
    with_data = [a for a in inputs if a.data is not None]
    if with_data and len(with_data) != len(inputs):
        missing = [a.name or a.spec for a in inputs if a.data is None]
        raise SpecError(f"inputs: give data for every input or none (no data for {', '.join(missing)})")
    specs = []
    for a in inputs:
        if a.spec is not None:
            specs.append(a.spec)
        else:  # the data's own shape, in the dtype JAX computes it in (f64 -> f32 without x64)
            dtype = jax.dtypes.canonicalize_dtype(a.data.dtype)
            a.data = fit_dtype(f"input {a.name} ({a.file})", a.data, dtype)
            specs.append(jax.ShapeDtypeStruct(a.data.shape, dtype))
    source = _weights_source(args)
    made = build_model(args, mesh)
    variables = None
    if isinstance(made, tuple) and len(made) == 2:
        made, variables = made
    if getattr(args, "eval", False) and isinstance(made, nnx.Module):
        made.eval()
    capture = _capture_parts(made)
    opts = _trace_options(made, capture, variables, method, mutable)
    detail = f"weights from {next(iter(source.values()))}" if source else ""
    with stages.stage("trace", detail), _mesh_context(mesh):
        try:
            if capture is not None:
                graph = _trace_capture(capture, specs, kwargs, method, source)
            else:
                graph = trace(made, *specs, **opts, **source, **kwargs)
        except NnxcError:
            raise
        except Exception as e:  # noqa: BLE001 - the model's own code failed on these inputs
            raise NnxcError(f"tracing {args.model} failed: {_short_exc(e)}") from None
    _bind_names(graph, inputs)
    args.input_data = _fit_data(graph, inputs) if with_data else None
    _warn_training(graph)
    return graph


def _weights_source(args) -> dict:
    """``--checkpoint DIR`` / ``--weights FILE`` -> nnxc.trace's ``checkpoint=`` / ``weights=``
    (a path that does not exist is misuse)."""
    checkpoint, weights = getattr(args, "checkpoint", None), getattr(args, "weights", None)
    if checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise SpecError(f"checkpoint folder not found: {checkpoint}" if not os.path.exists(checkpoint)
                            else f"--checkpoint {checkpoint}: not a folder (an Orbax checkpoint is a "
                                 "folder; give a .safetensors file with --weights)")
        return {"checkpoint": checkpoint}
    if weights is not None:
        if not os.path.isfile(weights):
            raise SpecError(f"weights file not found: {weights}" if not os.path.exists(weights)
                            else f"--weights {weights}: not a file (an Orbax checkpoint folder goes "
                                 "with --checkpoint)")
        return {"weights": weights}
    return {}


def _trace_options(made, capture, variables, method, mutable) -> dict:
    """``method=`` / ``mutable=`` / ``variables=`` for nnxc.trace, checked against the model."""
    import flax.linen as nn
    from flax import nnx
    is_linen = isinstance(made, nn.Module)
    if mutable is not None and not is_linen:
        raise SpecError("--mutable names Linen collections; an NNX model or a function updates "
                        "every Variable its call changes (drop updates with --prune)")
    if method is not None and capture is None:
        target = made
        if not callable(getattr(target, method, None)):
            public = sorted(n for n in dir(type(target)) if not n.startswith("_")
                            and callable(getattr(type(target), n, None)))
            if isinstance(made, nnx.Module):  # leave out nnx.Module's own API
                public = [n for n in public if not hasattr(nnx.Module, n)]
            elif is_linen:
                public = [n for n in public if not hasattr(nn.Module, n)]
            raise SpecError(f"{type(target).__name__} has no method {method!r}"
                            + (f" (has: {', '.join(public)})" if public else ""))
    opts: dict = {}
    if method is not None:
        opts["method"] = method
    if mutable is not None:
        opts["mutable"] = mutable
    if variables is not None:
        opts["variables"] = variables
    return opts


from ..frontend.capture import capture_parts as _capture_parts  # noqa: E402
from ..frontend.capture import trace_capture as _trace_capture  # noqa: E402


_GENERIC = re.compile(r"arg\d+")


def _bind_names(graph, inputs: list[InputArg]) -> None:
    """Inputs bind by position. A name given for an argument the model names generically
    (``*args`` of ``nnx.Sequential``: ``arg1``) becomes the graph input's name; a name that
    differs from a real argument name is a mistake."""
    if len(inputs) != len(graph.inputs):
        return
    taken = {v.name for v in graph.inputs}
    for arg, v in zip(inputs, graph.inputs):
        want = arg.name
        if not want or v.name == want:
            continue
        if not _GENERIC.fullmatch(v.name or "") or want in taken:
            raise SpecError(f"input {want!r} does not match the model's argument {v.name!r} "
                            f"(inputs are positional: {', '.join(x.name for x in graph.inputs)})")
        taken.discard(v.name)
        taken.add(want)
        v.name = want


def _fit_data(graph, inputs: list[InputArg]) -> list:
    """The given arrays in the graph inputs' dtypes, checked against their shapes."""
    from ..ir.types import DimError, solve_dims, to_dtype
    out, pairs = [], []
    for arg, v in zip(inputs, graph.inputs):
        label = f"input {v.name} ({arg.file})"
        data = fit_dtype(label, arg.data, to_dtype(v.type.dtype))
        shape = tuple(data.shape)
        if len(shape) != v.type.rank or any(isinstance(d, int) and d != n for d, n in zip(v.type.shape, shape)):
            raise SpecError(f"{label}: shape {shape} does not fit {v.type}")
        for d, n in zip(v.type.shape, shape):
            if isinstance(d, str):
                pairs.append((d, n))
        try:
            solve_dims(pairs, strict=False)
        except DimError as e:
            raise SpecError(f"{label}: shape {shape} does not fit {v.type} ({e})") from None
        out.append(data)
    return out


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
