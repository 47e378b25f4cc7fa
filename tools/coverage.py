"""Generate docs/coverage.md: every JAX primitive, how nnxc handles it on XLA and on ONNX, the
oldest ONNX opset its rule exports at, and the tests that exercise it.

    .venv/bin/python tools/coverage.py            # (re)write docs/coverage.md
    .venv/bin/python tools/coverage.py --check    # exit 1 if docs/coverage.md is stale or a
                                                  # primitive is neither covered nor explained

Which primitives: every ``jax.extend.core.Primitive`` instance bound to a module-level name in
``jax.extend.core.primitives`` (JAX's public list) and in the modules of ``MODULES`` below --
all of ``jax._src.lax`` (what ``jax.lax`` and ``jax.numpy`` bind) and ``jax._src.random``
(``jax.random``), and the modules defining the call, autodiff, callback, state, sharding and
shape-polymorphism primitives a traced Flax / JAX program can contain. Modules for one
accelerator (cuDNN, Pallas, Mosaic, Triton) and JAX's experimental ``hijax`` are left out.
A module that does not exist in the installed JAX is skipped.

Status on XLA: the frontend inlines call-like primitives (``INLINE``: their body is traced
through), turns ``scan`` / ``while`` / ``cond`` and the reducers of ``reduce`` /
``reduce_window`` into regions, inlines a ``shard_map`` on a 1-device mesh and rewrites its
collectives (``ONE_DEVICE``; over more devices it is a region), refuses the ones in its
``REFUSED`` table, and otherwise
keeps the primitive as an IR node that the XLA backend binds again (or lowers with a rule
in ``XLA_RULES``). Status on ONNX: a rule in ``ONNX_RULES``
(``native`` when the rule is one ONNX op, else the rule module that decomposes it), inlined
as on XLA, or refused. The opset column is the lowest opset the rule exports at (13, nnxc's
oldest, unless the rule demands more, ``need(b, N, ...)``; cases that demand more are named).

A primitive counts as covered on a backend when it is handled there *and* a test exercises it:
a test file that runs that backend (ONNX: export_onnx / crosscheck; XLA: nnxc.compile /
crosscheck / the frontend) names it -- ``lax.<name>``, ``<name>_p``, the quoted name, or one of
the spellings in ``ALIASES``. Every other primitive needs a reason in ``XLA_REASONS`` /
``ONNX_REASONS`` (or the frontend's ``REFUSED``); tests/test_coverage_table.py fails otherwise,
and when this file is stale.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "coverage.md")
TESTS = os.path.join(ROOT, "tests")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# packages walked whole, and single modules, searched for Primitive instances
PACKAGES = ("jax._src.lax", "jax._src.random")
MODULES = ("jax._src.ad_util", "jax._src.core", "jax._src.custom_derivatives", "jax._src.ad_checkpoint",
           "jax._src.pjit", "jax._src.callback", "jax._src.debugging", "jax._src.ffi",
           "jax._src.state.primitives", "jax._src.export.shape_poly", "jax._src.shard_map",
           "jax._src.custom_batching", "jax._src.custom_partitioning", "jax._src.checkify",
           "jax._src.compute_on", "jax._src.shard_alike", "jax._src.buffer_callback")

# -- why a primitive is not covered -------------------------------------------------------------

# primitives the frontend refuses at trace: their params have no IR form (each was tried)
TRACE_REFUSED = {
    "composite": "its body is a jaxpr param (param 'jaxpr'): the frontend does not inline lax.composite yet",
}

_COLLECTIVE = ("a collective over named mesh axes with no one-device form in nnxc (refused in a 1-device "
               "shard_map); in a multi-device shard_map it binds the primitive, not tried")
_ASYNC = "the asynchronous half of a collective, made by XLA's scheduling, never in a traced jaxpr"
_REF = "mutable array references (jax.new_ref, run_state), not traced by nnxc yet"
_INTERNAL = "JAX-internal (autodiff, batching or tracing bookkeeping), not in a jaxpr of a user's function"

# why a primitive nnxc would bind on XLA has no test (a JAX primitive that nothing public
# binds, or one not tried yet)
XLA_REASONS = {
    **{p: _COLLECTIVE for p in (
        "all_gather_reduced", "precv", "preduced", "psend", "ragged_all_to_all", "unreduced_psum",
        "unreduced_reduce_scatter", "reduced_vary_cast_p", "vary_unreduced_cast_p")},
    **{p: _ASYNC for p in (
        "all_gather_done", "all_gather_start", "all_gather_reduced_start", "all_to_all_done",
        "all_to_all_start", "pbroadcast_done", "pbroadcast_start", "ppermute_done", "ppermute_start",
        "psum_done", "psum_start", "psum_invariant_start", "reduce_scatter_done",
        "reduce_scatter_start", "unreduced_psum_start", "unreduced_reduce_scatter_start")},
    **{p: _REF for p in (
        "new_ref", "empty_ref", "free_ref", "freeze", "accum_grad_in_ref", "get", "swap", "addupdate",
        "run_state", "broadcast_to", "pin", "unpin", "create_linear")},
    **{p: _INTERNAL for p in (
        "custom_lin", "linear_call", "add_jaxvals", "dce_sink", "tie", "stage", "empty", "empty2",
        "unreachable", "remat_opt", "eval_jaxpr", "from_edtype", "to_edtype", "custom_vmap_call",
        "zeros_like", "call_hi_primitive", "select_and_scatter")},
    "buffer_callback": "a host callback on device buffers (jax.experimental.buffer_callback)",
    "inspect_sharding": "a debugging callback (jax.debug.inspect_array_sharding)",
    "reshard": "needs a mesh with explicit axes (jax.sharding.reshard); not tried",
    "layout_constraint": "jax.experimental.layout constraints; not tried",
    "closed_call": "the frontend inlines it, but jax.numpy, jax.lax and jax.named_call no longer bind it",
    "core_call": "the frontend inlines it, but nothing public binds it any more",
    "call": "a JAX-internal call primitive; nothing public binds it",
    "custom_jvp_call_jaxpr": "the pre-0.4 form of custom_jvp_call; nothing binds it any more",
    "mulhi": "no jax.lax function binds it (used inside jax.random's philox implementation)",
    "geqrf": "bound by the lowering of qr, not by a user's function (jnp.linalg.qr binds qr)",
    "geqp3": "bound by the lowering of pivoted QR (jax.scipy.linalg.qr(pivoting=True)); not tried",
    "scaled_dot": "block-scaled low-precision matmul (f8 operands with scales); not tried",
    "check": "jax.experimental.checkify checks: discharge them with checkify.checkify first; not tried",
    "custom_partitioning": "a custom SPMD partitioning rule (Python callbacks run by XLA's partitioner)",
    "shard_alike": "sharding propagation between two values (jax.experimental.shard_alike); not tried",
    "compute_on": "host offloading (jax.experimental.compute_on); not tried",
    "ffi_call": "a custom C++ / CUDA kernel registered with jax.ffi; not tried",
    "cudnn_fusion": "GPU only",
    "after_all": "tokens order side effects (callbacks, infeed), which nnxc refuses",
    "create_token": "tokens order side effects (callbacks, infeed), which nnxc refuses",
    "shape_assertion": "added by jax.export when lowering shape-polymorphic code, not in a traced jaxpr",
    "dimension_size": "jax.export's symbolic dimension size, not in a traced jaxpr (nnxc keeps symbolic dims)",
    "call_exported": "calls a jax.export artifact (jax.export.Exported.call); not tried",
    "philox2x32": "the philox PRNG implementation (not jax.random's default); not tried",
    "philox4x32": "the philox PRNG implementation (not jax.random's default); not tried",
    "threefry4x32": "the threefry4x32 PRNG implementation (jax.random's default is threefry2x32); not tried",
}

_NO_ONNX = "no ONNX rule"
_NO_OP = "ONNX has no operator for it, and nnxc has no decomposition into ONNX ops yet"
# why a primitive that traces has no ONNX rule, or no ONNX test
ONNX_REASONS = {
    **{p: _NO_OP for p in ("cholesky_update", "ormqr", "symmetric_product", "mulhi", "scaled_dot")},
    "random_gamma": "jax.random.gamma's sampler (a rejection loop per element over threefry draws) has "
                    "no ONNX rule yet",
    "rng_bit_generator": "XLA's counter-based generator (state in, state and bits out) has no ONNX rule yet",
}

# what a covered cell should say besides how the op is lowered
XLA_NOTES = {
    "sharding_constraint": "re-binds lax.with_sharding_constraint on the mesh compiled under (its spec is "
                           "kept; with no mesh of its axes, the value itself)",
    "device_put": "traced only with a one-device target (None, a device, a one-device sharding), then the "
                  "value itself",
}
ONNX_NOTES = {
    "sharding_constraint": "an identity: a sharding annotation has no meaning on one device, where an "
                           "ONNX graph runs",
    "device_put": "an identity: the placement on one device has no meaning in an ONNX graph",
    "ragged_dot_general": "the jax.lax.ragged_dot form only (lhs [m,k], rhs [g,k,n], group_sizes [g]); "
                          "other dimension numbers refused",
}

# how tests spell primitives that have no ``lax.<name>`` of their own
ALIASES = {
    "add_any": [r"jax\.grad\("], "broadcast_in_dim": [r"broadcast_to\("],
    "concatenate": [r"jnp\.concatenate\("], "conv_general_dilated": [r"conv_general_dilated", r"nnx\.Conv\("],
    "convert_element_type": [r"\.astype\("], "dot_general": [r"jnp\.einsum\(", r" @ ", r"jnp\.dot\("],
    "reduce_sum": [r"\.sum\(", r"jnp\.sum\("], "reduce_max": [r"\.max\(", r"jnp\.max\("],
    "reduce_min": [r"\.min\(", r"jnp\.min\("], "reduce_prod": [r"\.prod\(", r"lax\.mul, \("],
    "reduce_or": [r"(?<!np)\.any\(", r"jnp\.any\("], "reduce_and": [r"(?<!np)\.all\(", r"jnp\.all\("],
    "argmax": [r"\.argmax\("], "argmin": [r"\.argmin\("], "cumsum": [r"jnp\.cumsum\("],
    "cumprod": [r"jnp\.cumprod\("], "cumlogsumexp": [r"lax\.cumlogsumexp\("],
    "reduce_window_max": [r"max_pool\(", r"lax\.max, \("], "reduce_window_min": [r"min_pool\("],
    "reduce_window_sum": [r"avg_pool\("], "select_n": [r"jnp\.where\(", r"lax\.select_n\("],
    "iota": [r"jnp\.arange\("], "dynamic_slice": [r"dynamic_slice"], "dynamic_update_slice": [r"dynamic_update_slice"],
    "gather": [r"\[idx", r"jnp\.take\(", r"\.at\[.*\]\.get", r"gather"], "scatter-add": [r"\.at\[.*\]\.add\("],
    "scatter": [r"\.at\[.*\]\.set\("], "scatter-mul": [r"\.at\[.*\]\.multiply\("],
    "scatter-min": [r"\.at\[.*\]\.min\("], "scatter-max": [r"\.at\[.*\]\.max\("],
    "scatter-sub": [r"\.at\[.*\]\.subtract\("], "sort": [r"jnp\.sort\(", r"jnp\.argsort\("],
    "top_k": [r"lax\.top_k\("], "eq": [r"jnp\.equal\("], "ne": [r"jnp\.not_equal\("],
    "lt": [r"jnp\.less\("], "le": [r"jnp\.less_equal\("], "gt": [r"jnp\.greater\("],
    "ge": [r"jnp\.greater_equal\("], "and": [r"jnp\.bitwise_and\(", r"jnp\.logical_and\("],
    "or": [r"jnp\.bitwise_or\(", r"jnp\.logical_or\("], "xor": [r"jnp\.bitwise_xor\("],
    "not": [r"jnp\.logical_not\("], "pow": [r"jnp\.power\("], "rem": [r"jnp\.fmod\(", r"lax\.rem\("],
    "logistic": [r"jax\.nn\.sigmoid\("], "erf_inv": [r"lax\.erf_inv\("], "asin": [r"jnp\.arcsin\("],
    "acos": [r"jnp\.arccos\("], "atan": [r"jnp\.arctan\("], "asinh": [r"jnp\.arcsinh\("],
    "acosh": [r"jnp\.arccosh\("], "atanh": [r"jnp\.arctanh\("], "atan2": [r"jnp\.arctan2\("],
    "neg": [r"jnp\.negative\("], "rev": [r"\[::-1"], "pad": [r"jnp\.pad\(", r"lax\.pad\("],
    "transpose": [r"\.transpose\("], "reshape": [r"\.reshape\("], "squeeze": [r"\.squeeze\("],
    "slice": [r"\[\d*:\d*\]", r"lax\.slice\("], "split": [r"jnp\.split\("], "random_bits": [r"jax\.random\.(uniform|normal|bits)"],
    "random_split": [r"jax\.random\.split\("], "random_fold_in": [r"jax\.random\.fold_in\("],
    "random_seed": [r"jax\.random\.(key|PRNGKey)\("], "random_wrap": [r"jax\.random\.wrap_key_data\("],
    "random_unwrap": [r"jax\.random\.key_data\("], "threefry2x32": [r"jax\.random\.(uniform|normal|bits)", r"nnx\.Dropout"],
    "custom_jvp_call": [r"jax\.nn\.relu", r"jax\.nn\.gelu", r"custom_jvp"], "custom_vjp_call": [r"custom_vjp"],
    "pjit": [r"jax\.jit\("], "jit": [r"jax\.jit\("], "cond": [r"lax\.cond\(", r"lax\.switch\("],
    "while": [r"lax\.while_loop\(", r"lax\.fori_loop\("], "scan": [r"lax\.scan\(", r"nnx\.scan\("],
    "remat2": [r"jax\.checkpoint\(", r"nnx\.remat\("], "checkpoint": [r"jax\.checkpoint\("],
    "custom_linear_solve": [r"jnp\.linalg\.solve\("], "fft": [r"jnp\.fft\."],
    "stop_gradient": [r"stop_gradient"], "copy": [r"jnp\.copy\(", r"jnp\.array\(.*copy=True"],
    "name": [r"checkpoint_name\("], "sharding_constraint": [r"lax\.with_sharding_constraint\("],
    "device_put": [r"return jax\.device_put\("], "ragged_dot_general": [r"lax\.ragged_dot\("],
    "shard_map": [r"jax\.shard_map\(", r"experimental\.shard_map import"],
    "psum_invariant": [r"lax\.psum\("], "reduce_scatter": [r"lax\.psum_scatter\("],
    "pvary": [r"lax\.pcast\(.*to=\"varying\""], "all_gather_invariant": [r"lax\.all_gather\(.*to=\"invarying\""],
    "integer_pow": [r"lax\.integer_pow\("], "square": [r"jnp\.square\("],
    "sqrt": [r"jnp\.sqrt\("], "rsqrt": [r"lax\.rsqrt\("], "cbrt": [r"jnp\.cbrt\("],
    "is_finite": [r"jnp\.isfinite\("], "exp2": [r"jnp\.exp2\("], "expm1": [r"jnp\.expm1\("],
    "log1p": [r"jnp\.log1p\("], "round": [r"jnp\.round\("], "nextafter": [r"jnp\.nextafter\("],
    "clamp": [r"jnp\.clip\(", r"lax\.clamp\("], "max": [r"jnp\.maximum\("], "min": [r"jnp\.minimum\("],
    "cholesky": [r"jnp\.linalg\.cholesky\("], "eigh": [r"jnp\.linalg\.eigh\("], "qr": [r"jnp\.linalg\.qr\("],
    "svd": [r"jnp\.linalg\.svd\("], "lu": [r"jnp\.linalg\.(lu|det|slogdet)\("],
    "triangular_solve": [r"solve_triangular\(", r"jnp\.linalg\.(inv|solve)\("],
    "regularized_incomplete_beta": [r"lax\.betainc\("], "igamma": [r"lax\.igamma\("],
    "random_gamma": [r"jax\.random\.gamma\("], "bitcast_convert_type": [r"lax\.bitcast_convert_type\("],
    "reduce_precision": [r"lax\.reduce_precision\("], "dim_as_value": [r'"[a-z0-9]+\[B', r"x\.shape\[0\]"],
    "eq_to": [r"jnp\.searchsorted\(.*1j"], "lt_to": [r"jnp\.searchsorted\(.*compare_all"],
    "le_to": [r"jnp\.searchsorted\("], "abs": [r"jnp\.abs\("], "real": [r"jnp\.real\("], "imag": [r"jnp\.imag\("],
    "platform_index": [r"jnp\.linalg\.(det|slogdet)\("], "sign": [r"jnp\.sign\("],
    "floor": [r"jnp\.floor\("], "ceil": [r"jnp\.ceil\("], "exp": [r"jnp\.exp\("], "log": [r"jnp\.log\("],
    "tanh": [r"jnp\.tanh\("], "sin": [r"jnp\.sin\("], "cos": [r"jnp\.cos\("], "tan": [r"jnp\.tan\("],
    "sinh": [r"jnp\.sinh\("], "cosh": [r"jnp\.cosh\("], "add": [r"jnp\.add\("],
    "sub": [r"jnp\.subtract\("], "mul": [r"jnp\.multiply\("], "div": [r"jnp\.divide\("],
    "shift_left": [r"lax\.shift_left\("], "shift_right_logical": [r"lax\.shift_right_logical\("],
    "shift_right_arithmetic": [r"lax\.shift_right_arithmetic\("], "population_count": [r"lax\.population_count\("],
}


# -- enumerating JAX's primitives ---------------------------------------------------------------------

def _modules():
    names = []
    for pkg in PACKAGES:
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        names.append(pkg)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    return names + list(MODULES)


@functools.cache
def jax_primitives() -> dict[str, str]:
    """Primitive name -> the module that defines it (the public list first)."""
    from jax.extend import core as jcore
    from jax.extend.core import primitives as public
    found: dict[str, str] = {}
    for value in vars(public).values():
        if isinstance(value, jcore.Primitive):
            found.setdefault(value.name, "jax.extend.core.primitives")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _modules():
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional modules (GPU plugins, newer JAX only)
                continue
            for value in vars(mod).values():
                if isinstance(value, jcore.Primitive):
                    found.setdefault(value.name, name)
    return dict(sorted(found.items()))


# -- how nnxc handles each -------------------------------------------------------------------------

def _tables():
    import nnxc.backends.onnx.export  # noqa: F401 - loads every ONNX rule module
    import nnxc.backends.xla.lower  # noqa: F401 - loads every XLA rule module
    from nnxc.backends.onnx.table import ONNX_RULES
    from nnxc.frontend import jaxpr as fe
    try:
        from nnxc.backends.xla.rules import XLA_RULES
    except ImportError:  # older layout
        from nnxc.backends.xla.lower import XLA_RULES
    return fe, XLA_RULES, ONNX_RULES


def _inlined(fe, name: str) -> bool:
    return name in fe.INLINE or name == "custom_linear_solve"


_SHARD_MAP_XLA = "inlined on a 1-device mesh; over more devices a region, run as jax.shard_map"
_SHARD_MAP_ONNX = "inlined on a 1-device mesh (refused over more devices: an ONNX graph runs on one device)"
_ONE_DEVICE = "rewritten at trace over 1-device mesh axes (what it computes on one device)"


def xla_status(name: str) -> tuple[str, bool]:
    """(status text, handled)."""
    fe, xla_rules, _ = _tables()
    if name in fe.REFUSED:
        return f"refused: {fe.REFUSED[name]}", False
    if name == "shard_map":
        return _SHARD_MAP_XLA, True
    if name in fe.ONE_DEVICE:
        return f"{_ONE_DEVICE}; binds the primitive in a multi-device shard_map", True
    if _inlined(fe, name):
        return "inlined (its body is traced through)", True
    if name in fe.REGIONS:
        if name in xla_rules and name not in ("scan", "while", "cond"):
            return "rule (binds the primitive; its reducer is a region)", True
        return "region (lax control flow)", True
    if name in xla_rules:
        return "rule", True
    return "binds the primitive", True


def _chain(fn) -> list:
    """A rule and the rules it extends (``rule.base``), outermost first (None: no base)."""
    out = [fn]
    while hasattr(out[-1], "base"):
        out.append(out[-1].base)
    return out


def _complex_ops() -> set:
    fft = sys.modules.get("nnxc.backends.onnx.fft")
    return set(getattr(fft, "COMPLEX_RULES", ()))


def onnx_status(name: str) -> tuple[str, bool]:
    fe, _, onnx_rules = _tables()
    if name in fe.REFUSED:
        return f"refused: {fe.REFUSED[name]}", False
    if name == "shard_map":
        return _SHARD_MAP_ONNX, True
    if name in fe.ONE_DEVICE:
        return _ONE_DEVICE, True
    if _inlined(fe, name):
        return "inlined", True
    fn = onnx_rules.get(name)
    chain = [] if fn is None else _chain(fn)
    rules = [f for f in chain if f is not None]
    if not rules or (chain[-1] is None and name not in _complex_ops()):
        return _NO_ONNX, False
    home = chain[-1] if chain[-1] is not None else rules[0]
    native = _native_op(home)
    modules = []
    for f in reversed(rules):  # the op's own rule first, then the ones extending it
        m = f.__module__.rsplit(".", 1)[-1]
        if m == "fft" and name not in _complex_ops():
            continue  # fft.py's guard of every rule against complex operands
        if m not in modules:
            modules.append(m)
    if native and modules == [home.__module__.rsplit(".", 1)[-1]]:
        return f"native `{native}`", True
    kind = f"native `{native}`, extended" if native else "decomposed"
    return f"{kind} ({', '.join(f'`{m}.py`' for m in modules)})", True


def _native_op(fn) -> str | None:
    """The ONNX op of a one-op rule made by ``elementwise._simple``."""
    if fn.__qualname__.startswith("_simple.") and fn.__closure__:
        return fn.__closure__[0].cell_contents
    return None


_NEED = re.compile(r"need\(\s*b\s*,\s*(\d+)\s*,\s*f?\"([^\"]*)\"")
_REFUSE_OPSET = re.compile(r"opset >= (\d+)")


def min_opset(name: str) -> str:
    """13, or the opsets some cases of the rule need (from its ``need(b, N, ...)`` calls and
    those of the module-level helpers it calls)."""
    _, _, onnx_rules = _tables()
    fn = onnx_rules.get(name)
    if fn is None:
        return ""
    from nnxc.backends.onnx.export import MIN_OPSET
    sources = []
    for rule_fn in _chain(fn):
        if rule_fn is None or (rule_fn.__module__.endswith(".fft") and name not in _complex_ops()):
            continue
        try:
            src = inspect.getsource(rule_fn)
        except (OSError, TypeError):
            continue
        sources.append(src)
        mod = sys.modules[rule_fn.__module__]
        for helper in sorted(set(re.findall(r"\b(_?[a-z][a-z0-9_]*)\(", src))):
            obj = getattr(mod, helper, None)
            if inspect.isfunction(obj) and obj is not rule_fn and obj.__module__ == rule_fn.__module__:
                try:
                    sources.append(inspect.getsource(obj))
                except OSError:
                    pass
    needs = {}
    for text in sources:
        for n, what in _NEED.findall(text):
            what = re.sub(r"\{[^}]*\}", "…", what.replace("{node.op}", name))
            others = [o for o in jax_primitives() if len(o) > 3 and o != name and re.search(rf"\b{re.escape(o)}\b", what)]
            if others and not re.search(rf"\b{re.escape(name)}\b", what):
                continue  # a shared helper's case that belongs to another primitive
            needs.setdefault(int(n), what)
    top = ""
    for rule_fn in _chain(fn):  # a rule may say up to which opset the installed onnxruntime runs it
        if rule_fn is not None and callable(getattr(rule_fn, "max_opset", None)):
            top = f"–{rule_fn.max_opset()}"
    if not needs:
        return f"{MIN_OPSET}{top}"
    cases = "; ".join(f"{n} for {what}" for n, what in sorted(needs.items()))
    return f"{MIN_OPSET}{top} ({cases})"


# -- which tests exercise it --------------------------------------------------------------------------

@functools.cache
def _test_files() -> list[tuple[str, str, bool, bool]]:
    """(relative path, text, runs XLA, runs ONNX) for tests/test_*.py."""
    out = []
    for fname in sorted(os.listdir(TESTS)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        with open(os.path.join(TESTS, fname), encoding="utf-8") as f:
            text = "".join("\n" if NAMES_ONLY in line else line for line in f)
        onnx = fname.startswith("test_onnx") or "export_onnx" in text or "crosscheck" in text
        xla = (not fname.startswith("test_onnx")) or "nnxc.compile" in text
        out.append((f"tests/{fname}", text, xla, onnx))
    return out


# names that are also ordinary words in the tests (a CLI command, a pass, a custom call name):
# found through ``ALIASES`` only
NOT_QUOTED = {"check", "freeze", "copy", "device_put", "shape_assertion", "call", "get", "swap", "name",
              "stage", "tie", "empty", "pin", "unpin", "composite", "split", "jit", "cond", "while", "scan",
              "shard_map"}


# primitives whose lax function of the same name binds other primitives
NOT_LAX = {"reduce", "reduce_window"}
# a test line naming primitives without exercising them (tests/test_coverage_table.py) ends so
NAMES_ONLY = "# coverage: names only"


def _patterns(name: str) -> list[re.Pattern]:
    ident = re.escape(name.replace("-", "_"))
    pats = [] if name in NOT_LAX else [rf"\blax\.{ident}\b"]
    pats.append(rf"\b{ident}_p\b")
    if name not in NOT_QUOTED:
        pats.append(rf"[\"']{re.escape(name)}[\"']")
    return [re.compile(p) for p in pats + ALIASES.get(name, [])]


def _where(text: str, pos: int) -> str:
    """The test function around ``pos`` (a module-level table: none)."""
    head = text[:pos]
    m = None
    for m in re.finditer(r"^def (test_\w+)|^(?:def|class) \w+|^[A-Z_]+ = ", head, re.M):
        pass
    if m is not None and m.group(1):
        return m.group(1)
    return ""


# where to look first: the op-by-op test files, then the rest in name order
PREFERRED = {"xla": ("tests/test_coverage_table.py", "tests/test_coverage.py", "tests/test_zoo_xla.py"),
             "onnx": ("tests/test_onnx_ops.py", "tests/test_onnx_special.py", "tests/test_onnx_")}


def _ranked(backend: str) -> list:
    prefs = PREFERRED[backend]

    def rank(entry):
        path = entry[0]
        hits = [i for i, p in enumerate(prefs) if path == p or (p.endswith("_") and path.startswith(p))]
        return (hits[0] if hits else len(prefs), path)
    return sorted(_test_files(), key=rank)


@functools.cache
def tests_for(name: str) -> dict[str, str]:
    """backend -> "tests/file.py::test_fn" (or the file) of the first test naming the primitive,
    looking in ``PREFERRED`` files first."""
    pats = _patterns(name)
    out: dict[str, str] = {}
    for backend in ("xla", "onnx"):
        for path, text, xla, onnx in _ranked(backend):
            if not (xla if backend == "xla" else onnx):
                continue
            hits = [m.start() for p in pats for m in [p.search(text)] if m]
            if hits:
                fn = _where(text, min(hits))
                out[backend] = f"{path}::{fn}" if fn else path
                break
    return out


# -- the table ---------------------------------------------------------------------------------------

def _judge(handled: bool, status: str, test: str, reason: str | None) -> tuple[bool, str, bool]:
    """(covered, text, explained) of one backend's cell."""
    if handled and test:
        return True, status, True
    if not handled and status.startswith("refused"):
        return False, status, True
    if reason:
        return False, f"not covered: {reason}" if handled else f"{status}: {reason}", True
    return False, status + ("; no test names it" if handled else ""), False


def rows() -> list[dict]:
    out = []
    for name, module in jax_primitives().items():
        tests = tests_for(name)
        xs, x_ok = xla_status(name)
        os_, o_ok = onnx_status(name)
        if x_ok and name in XLA_NOTES:
            xs = f"{xs}; {XLA_NOTES[name]}"
        if o_ok and name in ONNX_NOTES:
            os_ = f"{os_}; {ONNX_NOTES[name]}"
        if name in TRACE_REFUSED:
            xs, x_ok = f"refused at trace: {TRACE_REFUSED[name]}", False
            os_, o_ok = "refused at trace (see XLA)", False
        x_cov, x_text, x_expl = _judge(x_ok, xs, tests.get("xla", ""), XLA_REASONS.get(name))
        o_reason = ONNX_REASONS.get(name) or (XLA_REASONS.get(name) if not x_cov else None)
        o_cov, o_text, o_expl = _judge(o_ok, os_, tests.get("onnx", ""), o_reason)
        out.append({"name": name, "module": module, "xla": x_text, "onnx": o_text,
                    "opset": min_opset(name) if o_ok else "", "xla_test": tests.get("xla", "") if x_cov else "",
                    "onnx_test": tests.get("onnx", "") if o_cov else "", "xla_covered": x_cov,
                    "onnx_covered": o_cov, "explained": x_expl and o_expl})
    return out


def stale_reasons(table=None) -> list[str]:
    """Reasons given for primitives that are covered after all (drop them from the tables)."""
    out = []
    for r in table or rows():
        for covered, reasons, what in ((r["xla_covered"], (XLA_REASONS, TRACE_REFUSED), "XLA"),
                                       (r["onnx_covered"], (ONNX_REASONS,), "ONNX")):
            if covered and any(r["name"] in t for t in reasons):
                out.append(f"{r['name']} is covered on {what} but has a reason in tools/coverage.py")
    return out


def unexplained(table=None) -> list[str]:
    """Primitives that are neither covered nor given a reason (on either backend)."""
    return [f"{r['name']} (XLA: {r['xla']}; ONNX: {r['onnx']})" for r in table or rows() if not r["explained"]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    import jax
    import onnxruntime
    table = rows()
    total = len(table)
    xla = sum(r["xla_covered"] for r in table)
    onnx = sum(r["onnx_covered"] for r in table)
    lines = [
        "# Primitive coverage",
        "",
        f"**Covered on XLA: {xla} / {total}. Covered on ONNX: {onnx} / {total}.**",
        "",
        "Generated by `tools/coverage.py` (do not edit; `.venv/bin/python tools/coverage.py` rewrites it, "
        "`tests/test_coverage_table.py` fails when it is stale) "
        f"with jax {jax.__version__} and onnxruntime {onnxruntime.__version__}.",
        "",
        "Every `jax.extend.core.Primitive` instance bound at module level in `jax.extend.core.primitives`, "
        "in the modules of `jax._src.lax` and `jax._src.random`, and in the modules defining JAX's call, "
        "autodiff, callback, state, sharding and shape-polymorphism primitives (the list is in "
        "`tools/coverage.py`). Covered means handled on that backend *and* named by a test that runs it; "
        "otherwise the row says why. ONNX opset: the lowest opset the rule exports at (cases that need a "
        "newer one are named).",
        "",
        "| primitive | XLA | ONNX | ONNX opset | XLA test | ONNX test |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        mark = lambda ok: "✓ " if ok else "✗ "  # noqa: E731
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{r['name']}`", mark(r["xla_covered"]) + r["xla"], mark(r["onnx_covered"]) + r["onnx"],
            r["opset"], r["xla_test"], r["onnx_test"])) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/coverage.md is stale or a "
                                                         "primitive is neither covered nor explained")
    args = ap.parse_args(argv)
    text = render()
    missing = unexplained() + stale_reasons()
    if args.check:
        try:
            with open(DOC, encoding="utf-8") as f:
                stale = f.read() != text
        except FileNotFoundError:
            stale = True
        for m in missing:
            print(f"not covered and no reason: {m}")
        if stale:
            print(f"{os.path.relpath(DOC, ROOT)} is stale: run .venv/bin/python tools/coverage.py")
        return 1 if stale or missing else 0
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    tmp = DOC + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, DOC)
    print(text.splitlines()[2])
    for m in missing:
        print(f"not covered and no reason: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
