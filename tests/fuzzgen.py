"""Differential fuzzing of nnxc: a seeded generator of random valid programs and the checks
that hold nnxc to its exactness promise.

``generate(seed) -> Program`` builds a small random program (tens of ops): a plain JAX
function, a Flax NNX module or a Linen module with its variables, made of NNX/Linen layers
(Linear/Dense, Conv, ConvTranspose, LayerNorm, RMSNorm, GroupNorm, BatchNorm in train and
eval mode, Dropout with rngs, MultiHeadAttention, Embed, RNN cells, pooling, float16 compute,
a layer called twice, user variables and ``sow``) and jnp / lax / jax.nn ops (elementwise
math, integer ops, comparisons and ``where``, casts, reductions, softmax / gelu / silu /
norms / attention written by hand and via jax.nn, shape ops, gather and scatter, dot /
einsum, cumsum and friends, sort / top_k, ``lax.scan`` / ``fori_loop`` / ``while_loop`` /
``cond`` / ``switch`` / ``vmap`` nested up to two deep, checkpoint, custom_jvp), over
f32 / f16 / i32 / bool inputs whose specs may carry symbolic dims ``B`` (run at 1 and 3)
and ``T`` (= B + 1), size-1 and size-0 dims, and sometimes NaN / +-inf / +-0 / huge input
values. ``Program.source`` is a standalone module: PROGRAM (specs, sizes, per-output
metadata), ``make_inputs(B)`` and ``build() -> (model, trace keyword arguments)``.

``check(program, stages) -> list[Outcome]`` runs the program's own ``jax.jit`` (the
oracle, called as its user calls it) against nnxc, stage by stage:

  none, default  ``nnxc.compile(nnxc.optimize(g, p))``: outputs and state updates bit-exact
                 (NaN positions included), the variables the model updates all updated
  fast, inference  the same within tolerance (below)
  onnx           ``nnxc.export_onnx`` of the graph optimized with the program's
                 ``onnx_pipeline`` (none/default/inference), run in onnxruntime, within
                 tolerance
  roundtrip      the IR text and JSON forms of the traced and optimized graphs read back
                 and print the same text; the graphs verify

Tolerance: per element ``|got - want| <= max(rtol * scale, 4 * sensitivity) + rtol * |want|``
with rtol 1e-5 (1e-2 for outputs f16 was involved in) and scale the output's largest finite
magnitude. ``sensitivity`` is measured, only when the plain bound fails, by Monte Carlo
rounding: the program re-run a few times with every inexact float result (and every term of
every sum) nudged by up to 2 ulps; an element of an ill-conditioned output (cancellation,
a comparison of computed values that flips) moves and gets that much room, integer and
boolean elements that move are not compared. Exact stages need no tolerance.

Each outcome is ok, refused (a clear nnxc error such as UnsupportedOpError; an "internal
error" reported as a refusal counts as a crash), mismatch, crash (any other exception; by
stage and type), ort_refused (onnxruntime refuses, crashes on or hangs on a file nnxc
wrote: it runs in a forked child), invalid (the oracle itself fails: a generator bug),
xla_only (ONNX differs from jax.jit, and agrees with JAX's own evaluation of the program with
max/min reductions propagating NaN as JAX specifies them, fused or op by op: XLA:CPU drops
NaN in some max reductions, openxla/xla#21461, its fused kernels contract ``a*b - c`` into one
FMA that does not overflow where the separate ops do, it divides by a broadcast value as a
multiplication by the reciprocal, which underflows to 0 for divisors above 2**126, and its
dot rounds each product to f32 before adding, so a product that overflows meets an infinity
as inf - inf = NaN where onnxruntime's FMA adds it exactly (op by op, the oracle's dots use
exact products); counted apart, not an nnxc failure) or skipped (a stage needing a pipeline whose own stage
failed). An exact-stage mismatch on a
symbolic program says when ``jax.export`` with the same specs computes nnxc's bits (JAX
traced the program differently with symbolic dims; not a lowering bug).

``reproducer(program, outcomes)`` is a standalone script (only nnxc installed) that reruns
the failing checks; ``reduce(program, still_fails)`` shrinks a failing program.
The checking code between the HARNESS markers below is copied verbatim into reproducers.
"""
from __future__ import annotations

import math
import random
import re
import sys
import types
from dataclasses import dataclass, field

# ==== HARNESS BEGIN (copied verbatim into reproducers; needs only nnxc and its deps) ====
import warnings

import jax
import numpy as np
import nnxc
from flax import nnx

STAGES = ("none", "default", "fast", "inference", "onnx", "roundtrip")
DEFAULT_STAGES = ("none", "default", "inference", "onnx", "roundtrip")
EXACT_STAGES = ("none", "default")


class Mismatch(AssertionError):
    """nnxc's result differs from the oracle's (or a round trip changed the IR)."""


class OrtRefused(Exception):
    """onnxruntime refused to load or run a model nnxc exported."""


class InvalidProgram(Exception):
    """The program's own jax.jit fails: a generator bug, not an nnxc one."""


class Skipped(Exception):
    """A stage could not run because an earlier stage it needs failed (reported there)."""


class XlaOnly(Exception):
    """nnxc's ONNX differs from the program's jax.jit only where XLA:CPU's compiled program
    departs from JAX's own op-by-op semantics: it drops NaN in some max/min reductions
    (openxla/xla#21461), contracts ``a*b - c`` into an FMA that does not overflow where the
    separate ops do, or divides by a broadcast value as a multiplication by its reciprocal,
    which underflows to 0 for divisors above 2**126 (``x / 1.7e38`` is 0, and ``inf / 1.7e38``
    NaN; fuzz seed 31407); ONNX agrees with the program evaluated with NaN-propagating
    reductions (jitted, or op by op). Not an nnxc mismatch; counted apart."""


def _host(x):
    if isinstance(x, nnx.Variable):
        x = x.get_value()
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _keyname(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_state(state, host: bool = True) -> dict:
    """An nnx State as {dotted path: array} (the paths nnxc names variables by)."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        for sub, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            out[".".join([str(p) for p in path] + [_keyname(k) for k in sub])] = _host(leaf) if host else leaf
    return out


def oracle(obj, kw, args):
    """The program's own jax.jit, called as its user calls it (an NNX model as a jit argument,
    Flax's pytree form, returning its outputs and the variables the call changes).

    Returns (outputs, state before by path, state after by path); the model is not changed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(obj, nnx.Module):
            graphdef, state = nnx.split(obj)

            def step(state, *args):  # the model as a jit argument; out and what it changes
                given = {id(x) for x in jax.tree_util.tree_leaves(state)}  # before: merge shares
                model = nnx.merge(graphdef, state)
                out = model(*args)
                after = _flat_state(nnx.state(model), host=False)
                return out, {p: x for p, x in after.items() if id(x) not in given}

            out, changed = jax.jit(step)(state, *args)
            before = _flat_state(state)
            return out, before, {**before, **{p: _host(x) for p, x in changed.items()}}
        if "variables" in kw:  # Linen
            out = jax.jit(lambda v, *a: obj.apply(v, *a))(kw["variables"], *args)
            return out, {}, {}
        return jax.jit(obj)(*args), {}, {}


# -- Monte Carlo rounding: how much may a backend legitimately differ? -------------------
# The program is re-run with every inexact float operation's result (and the terms of every
# sum) nudged by up to 2 ulps, pseudo-randomly, a few times. How far each output element
# moves measures its sensitivity to rounding: the tolerance of the inexact stages is the
# larger of rtol * scale and MC_K times that spread, element by element. An integer or
# boolean element that moves (a comparison that flips) is not compared.
MC_RUNS = 4          # nudged runs; 4x as many when an output went through a discontinuity
MC_K = 4.0
_EXACT_PRIMS = frozenset("""
    reshape broadcast_in_dim transpose squeeze expand_dims slice dynamic_slice
    dynamic_update_slice gather scatter concatenate pad rev select_n copy copy_p max min neg
    abs sign floor ceil round reduce_max reduce_min argmax argmin sort convert_element_type
    iota eq ne lt le gt ge and or not xor stop_gradient clamp reduce_precision
    reduce_and reduce_or is_finite bitcast_convert_type random_bits random_wrap random_unwrap
    random_seed random_fold_in random_split threefry2x32 shift_left shift_right_logical
    shift_right_arithmetic population_count cummax cummin top_k split""".split())
_SUM_PRIMS = frozenset("""reduce_sum dot_general conv_general_dilated cumsum cumprod
    cumlogsumexp reduce_prod reduce_window_sum reduce_window""".split())


def _nudge(x, k: int, s):
    """``x`` moved by up to 2 ulps, pseudo-randomly by position, site ``k`` and run ``s``."""
    import jax.numpy as jnp
    from jax import lax
    if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
        return x
    flat = jnp.zeros(x.shape, jnp.float32)
    stride = 1
    for d in reversed(range(len(x.shape))):
        flat = flat + lax.broadcasted_iota(jnp.float32, x.shape, d) * stride
        stride *= x.shape[d]
    h = jnp.sin(flat * 12.9898 + (k % 9973) * 78.233 + s * 37.719) * 43758.5453
    u = (h - jnp.floor(h)) * 2.0 - 1.0
    return x + x * (u * (2 * float(jnp.finfo(x.dtype).eps))).astype(x.dtype)


def _eval_jaxpr(jaxpr, consts, args, nudge, ieee: bool = False):
    """Evaluate ``jaxpr`` primitive by primitive (inside a jit), passing inexact results
    through ``nudge``; ``ieee``: max/min reductions propagate NaN, as JAX specifies them and
    as XLA:CPU does not for some shapes (openxla/xla#21461)."""
    import jax.numpy as jnp
    from jax import lax
    env = {}

    def read(v):
        return v.val if type(v).__name__ == "Literal" else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name, p = eqn.primitive.name, eqn.params
        if name == "scan":
            nc, ncar, body = p["num_consts"], p["num_carry"], p["jaxpr"]
            consts_, init, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]

            def step(carry, x, body=body, consts_=consts_, ncar=ncar):
                res = _eval_jaxpr(body.jaxpr, body.consts, consts_ + list(carry) + list(x), nudge, ieee)
                return res[:ncar], res[ncar:]

            carry, ys = lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"])
            outs = list(carry) + list(ys)
        elif name == "cond":
            fns = [lambda *o, b=b: _eval_jaxpr(b.jaxpr, b.consts, list(o), nudge, ieee) for b in p["branches"]]
            outs = lax.switch(ins[0], fns, *ins[1:])
        elif name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            cc, bc, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
            cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
            outs = lax.while_loop(
                lambda c: _eval_jaxpr(cj.jaxpr, cj.consts, cc + list(c), lambda x: x, ieee)[0],
                lambda c: _eval_jaxpr(bj.jaxpr, bj.consts, bc + list(c), nudge, ieee), init)
        elif ("jaxpr" in p or "call_jaxpr" in p) and name not in ("custom_lin",):
            sub = p.get("call_jaxpr", p.get("jaxpr"))
            outs = _eval_jaxpr(getattr(sub, "jaxpr", sub), getattr(sub, "consts", ()), ins, nudge, ieee)
        else:
            if name in _SUM_PRIMS:
                ins = [nudge(x) for x in ins]
            concrete = not any(isinstance(x, jax.core.Tracer) for x in ins)
            if ieee and name == "dot_general" and concrete and all(
                    jnp.issubdtype(x.dtype, jnp.floating) for x in ins):
                # op by op, each product exact (f64): onnxruntime's kernels multiply-add in
                # one FMA, so a product that overflows f32 is added exactly (1.7e38 * 1.7e38
                # + -inf is -inf), where XLA:CPU rounds it to inf first (inf - inf: NaN)
                env[eqn.outvars[0]] = _dot_f64(ins[0], ins[1], p, eqn.outvars[0].aval.dtype)
                continue
            if ieee and name == "div" and concrete:
                # op by op, the divisor materialized: XLA:CPU divides by a broadcast operand as
                # a multiplication by its reciprocal, which underflows for divisors > 2**126
                shape = eqn.outvars[0].aval.shape
                ins = [np.array(np.broadcast_to(np.asarray(x), shape)) for x in ins]
            outs = eqn.primitive.bind(*ins, **p)
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            if ieee and name in ("reduce_max", "reduce_min") and jnp.issubdtype(ins[0].dtype, jnp.floating):
                outs = [jnp.where(jnp.any(jnp.isnan(ins[0]), axis=tuple(p["axes"])),
                                  jnp.array(jnp.nan, outs[0].dtype), outs[0])]
            if name not in _EXACT_PRIMS:
                outs = [nudge(o) for o in outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _dot_f64(x, y, params, dtype):
    """``lax.dot_general`` with exact products and f64 sums, rounded once to ``dtype``."""
    (cx, cy), (bx, by) = params["dimension_numbers"]
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    sx = [None] * np.ndim(x)
    sy = [None] * np.ndim(y)
    for i, j in zip(bx, by):
        sx[i] = sy[j] = next(letters)
    for i, j in zip(cx, cy):
        sx[i] = sy[j] = next(letters)
    sx = [c or next(letters) for c in sx]
    sy = [c or next(letters) for c in sy]
    out = ([sx[i] for i in bx] + [c for i, c in enumerate(sx) if i not in bx and i not in cx]
           + [c for i, c in enumerate(sy) if i not in by and i not in cy])
    with np.errstate(all="ignore"):
        r = np.einsum(f"{''.join(sx)},{''.join(sy)}->{''.join(out)}",
                      np.asarray(x, np.float64), np.asarray(y, np.float64))
        return np.asarray(r).astype(dtype)


def _pure(obj, kw):
    """The program as a pure function ``(state, *args) -> (outputs, new state by path)`` and
    its state (nnx: the split State; Linen: the variables; functions: None)."""
    if isinstance(obj, nnx.Module):
        graphdef, state = nnx.split(obj)

        def pure(state, *a):
            model = nnx.merge(graphdef, state)
            return model(*a), _flat_state(nnx.state(model), host=False)

        return pure, state
    if "variables" in kw:
        return (lambda v, *a: (obj.apply(v, *a), {})), kw["variables"]
    return (lambda _, *a: (obj(*a), {})), None


def symbolic_oracle(obj, kw, specs, args) -> list:
    """Output leaves of ``jax.export`` of the program with the same symbolic specs, called on
    ``args``: what JAX itself computes when the program is traced with symbolic dims."""
    scope = jax.export.SymbolicScope()
    names = {"f32": "float32", "f16": "float16", "i32": "int32", "bool": "bool"}
    abstract = []
    for spec in specs:
        dtype, dims = spec[:-1].split("[")
        abstract.append(jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims, scope=scope)
                                             if dims else (), names[dtype]))
    pure, state = _pure(obj, kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state_abs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
        exported = jax.export.export(jax.jit(lambda st, *a: pure(st, *a)[0]))(state_abs, *abstract)
        return [_host(x) for x in jax.tree_util.tree_leaves(exported.call(state, *args))]


def _program_jaxpr(obj, kw, args):
    """(closed jaxpr of the program as a pure function, output tree, flat arguments)."""
    pure, state = _pure(obj, kw)
    call_args = (state, *args)
    closed, shapes = jax.make_jaxpr(pure, return_shape=True)(*call_args)
    return closed, jax.tree_util.tree_structure(shapes), jax.tree_util.tree_leaves(call_args)


def _unflatten(tree, flat) -> tuple:
    """(output leaves, updated state by path) on the host, from the pure function's leaves."""
    out, new_state = jax.tree_util.tree_unflatten(tree, flat)
    return [_host(x) for x in jax.tree_util.tree_leaves(out)], {k: _host(v) for k, v in new_state.items()}


def ieee_oracle(obj, kw, args, fused: bool = True):
    """(output leaves, updated state by path) of the program evaluated primitive by primitive
    with max/min reductions propagating NaN (``_eval_jaxpr(..., ieee=True)``): in one jit
    (``fused``), or each primitive compiled on its own (no fusion, no FMA contraction)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        closed, tree, flat = _program_jaxpr(obj, kw, args)
        run = lambda *xs: _eval_jaxpr(closed.jaxpr, closed.consts, list(xs),  # noqa: E731
                                      lambda x: x, ieee=True)
        return _unflatten(tree, (jax.jit(run) if fused else run)(*flat))


def monte_carlo(obj, kw, args, runs: int = MC_RUNS) -> list:
    """[(output leaves, updated state by path)] of ``runs`` nudged runs of the program."""
    import itertools
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        closed, tree, flat = _program_jaxpr(obj, kw, args)

        def run(s, *xs):
            sites = itertools.count()
            return _eval_jaxpr(closed.jaxpr, closed.consts, list(xs), lambda x: _nudge(x, next(sites), s))

        jitted = jax.jit(run)
        return [_unflatten(tree, jitted(float(s), *flat)) for s in range(1, runs + 1)]


def spread(want, runs) -> np.ndarray:
    """Per element: how far the nudged runs moved from ``want`` (inf: a NaN/inf appeared or
    vanished, or an integer/boolean changed)."""
    w = _host(want)
    out = np.zeros(w.shape, np.float64)
    for r in runs:
        r = _host(r)
        if r.shape != w.shape:
            return np.full(w.shape, np.inf)
        if w.dtype.kind not in "fc":
            out = np.where(r != w, np.inf, out)
            continue
        a, b = w.astype(np.float64), r.astype(np.float64)
        with np.errstate(invalid="ignore"):
            d = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
        out = np.maximum(out, np.where(np.isnan(d), np.inf, d))
    return out


def _where(got, want, bad) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0]) if np.ndim(bad) else ()
    g = got[idx] if got.ndim else got
    w = want[idx] if want.ndim else want
    return f"{int(np.sum(bad))} of {bad.size} element(s) differ; first at {idx}: got {g!r}, want {w!r}"


def assert_exact(got, want, what: str):
    got, want = _host(got), _host(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Mismatch(f"{what}: got {got.dtype}{list(got.shape)}, want {want.dtype}{list(want.shape)}")
    same = (got == want) | ((got != got) & (want != want))
    if not np.all(same):
        raise Mismatch(f"{what}: not bit-exact: {_where(got, want, ~same)}")


def assert_close(got, want, what: str, rtol: float, sensitivity=None):
    """Per element |got - want| <= max(rtol * scale, MC_K * sensitivity) + rtol * |want|, where
    scale = max |want| (finite) and ``sensitivity`` is the Monte Carlo spread (see ``spread``);
    NaN matches NaN, inf matches inf; integers and booleans must be equal unless sensitive."""
    got, want = _host(got), _host(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Mismatch(f"{what}: got {got.dtype}{list(got.shape)}, want {want.dtype}{list(want.shape)}")
    sens = np.zeros(want.shape) if sensitivity is None else sensitivity
    if want.dtype.kind not in "fc":
        ok = (got == want) | (sens > 0)
        if not np.all(ok):
            raise Mismatch(f"{what}: {_where(got, want, ~ok)}")
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.abs(w[np.isfinite(w)])
    scale = float(finite.max()) if finite.size else 0.0
    tol = np.maximum(rtol * (scale or 1.0), MC_K * sens)
    with np.errstate(invalid="ignore"):
        ok = (g == w) | (np.isnan(g) & np.isnan(w)) | (np.abs(g - w) <= tol + rtol * np.abs(w))
    if not np.all(ok):
        bad = ~ok
        with np.errstate(invalid="ignore"):
            err = float(np.nanmax(np.where(ok, 0.0, np.abs(g - w))))
        special = int(np.sum(bad & ~(np.isfinite(g) & np.isfinite(w))))
        if special:
            raise Mismatch(f"{what}: NaN/inf differ at {special} element(s) ({int(bad.sum())} bad in "
                           f"all): {_where(got, want, bad)}")
        allowed = float(np.max(np.where(bad, tol, 0.0)))
        raise Mismatch(f"{what}: beyond tolerance (max abs err {err:.3g}, allowed {allowed:.3g} + "
                       f"{rtol:g}*|want|; rtol {rtol:g} of scale {scale:.3g}, rounding sensitivity "
                       f"{float(np.max(np.where(bad, sens, 0.0))):.3g}): {_where(got, want, bad)}")


def _onnx_job(model_bytes: bytes, feeds: list):
    """(input names, [outputs or an error message, per feed]); raises OrtRefused on load."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise OrtRefused(f"onnxruntime cannot load the model: {type(e).__name__}: {e}") from None
    names = [i.name for i in session.get_inputs()]
    runs = []
    for flat in feeds:
        try:
            runs.append(session.run(None, dict(zip(names, flat))) if len(names) == len(flat) else None)
        except Exception as e:  # noqa: BLE001
            runs.append(f"{type(e).__name__}: {e}")
    return names, runs


def onnx_runs(model_bytes: bytes, feeds: list, timeout: float = 300.0):
    """``_onnx_job`` in a forked child process, so that onnxruntime crashing (it segfaults on
    some models) or hanging on a model is reported as OrtRefused instead of killing us."""
    import os
    import pickle
    import select
    import signal
    import time
    import onnxruntime  # noqa: F401 - imported before forking: the child imports nothing
    if not hasattr(os, "fork"):
        return _onnx_job(model_bytes, feeds)
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns that forking a threaded process may deadlock
        pid = os.fork()
    if pid == 0:  # the child: onnxruntime and numpy only
        code = 0
        try:
            os.close(r)
            try:
                res = ("ok", _onnx_job(model_bytes, feeds))
            except OrtRefused as e:
                res = ("refused", str(e))
            with os.fdopen(w, "wb") as fh:
                fh.write(pickle.dumps(res))
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(r, "rb", buffering=0) as fh:
        while True:
            ready, _, _ = select.select([fh], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise OrtRefused(f"onnxruntime did not finish within {timeout:.0f} s")
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise OrtRefused(f"onnxruntime crashed ({signal.Signals(os.WTERMSIG(status)).name}) "
                         "loading or running the model")
    if not chunks:
        raise OrtRefused("onnxruntime's process ended without a result")
    kind, res = pickle.loads(b"".join(chunks))
    if kind == "refused":
        raise OrtRefused(res)
    return res


class Run:
    """One program under test: builds it, traces it once, runs its oracle at each size."""

    def __init__(self, program_ns: dict):
        self.P = program_ns["PROGRAM"]
        self.make_inputs = program_ns["make_inputs"]
        self.obj, self.kw = program_ns["build"]()
        self.sizes = self.P["sizes"]
        self.inputs = {B: self.make_inputs(B) for B in self.sizes}
        self._refs = None
        self._graph = None
        self._optimized = {}
        self._results = {}  # IR text -> (exe, {B: (outputs, new state)}): equal graphs run once
        self._mc = {}
        self.stages = set(STAGES)  # the stages this run checks (run_checks sets them)

    def refs(self):
        if self._refs is None:
            try:
                self._refs = {B: oracle(self.obj, self.kw, self.inputs[B]) for B in self.sizes}
            except Exception as e:  # noqa: BLE001
                raise InvalidProgram(f"the program's own jax.jit fails: {type(e).__name__}: {e}") from e
        return self._refs

    def graph(self):
        if self._graph is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._graph = nnxc.trace(self.obj, *self.P["specs"], **self.kw)
        return self._graph

    def optimized(self, pipeline: str):
        if pipeline not in self._optimized:
            self._optimized[pipeline] = nnxc.optimize(self.graph(), pipeline)
        return self._optimized[pipeline]

    def sensitivity(self, B):
        """Per output leaf and per updated variable: the Monte Carlo spread at size B."""
        if B not in self._mc:
            want, _, after = self.refs()[B]
            runs = monte_carlo(self.obj, self.kw, self.inputs[B],
                               MC_RUNS * (4 if any(o["fragile"] for o in self.P["outputs"]) else 1))
            leaves = jax.tree_util.tree_leaves(want)
            outs = [spread(w, [r[0][i] for r in runs]) for i, w in enumerate(leaves)]
            state = {p: spread(x, [r[1][p] for r in runs if p in r[1]]) for p, x in after.items()}
            self._mc[B] = (outs, state)
        return self._mc[B]

    def xla(self, g, B):
        """``nnxc.compile(g)`` applied to the inputs at size B: (outputs, new state).

        Graphs that print the same (e.g. when a pipeline changed nothing) are compiled once."""
        key = str(g)
        if key not in self._results:
            self._results[key] = (nnxc.compile(g), {})
        exe, runs = self._results[key]
        if B not in runs:
            runs[B] = exe.apply(exe.state, *self.inputs[B])
        return runs[B]

    # -- the checks, one per stage; each raises on failure ----------------------
    def check_exact(self, pipeline: str):
        """XLA on the optimized graph: outputs and state updates bit-exact at every size."""
        g = self.optimized(pipeline)
        updated = [p for p, _ in g.updates]
        for B, (want, before, after) in self.refs().items():
            out, new_state = self.xla(g, B)
            at = f"[{pipeline}] B={B}" if B is not None else f"[{pipeline}]"
            if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(want):
                raise Mismatch(f"{at}: output structure {jax.tree_util.tree_structure(out)} != "
                               f"{jax.tree_util.tree_structure(want)}")
            for i, (o, w) in enumerate(zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(want))):
                try:
                    assert_exact(o, w, f"{at} output {i}")
                except Mismatch as e:
                    raise Mismatch(f"{e}{self._symbolic_note(B, i, o)}") from None
            changed = {p for p, x in after.items() if p not in before or not np.array_equal(before[p], x)}
            missing = sorted(changed - set(updated))
            if missing:
                raise Mismatch(f"{at}: the model updates {missing} but the graph does not")
            for p in updated:
                if p not in after:
                    raise Mismatch(f"{at}: the graph updates {p!r}, which the model does not have")
                assert_exact(new_state[p], after[p], f"{at} update {p}")

    def _symbolic_note(self, B, i, got) -> str:
        """When JAX's own export with the same symbolic specs computes nnxc's bits, say so."""
        if B is None:
            return ""
        try:
            exported = symbolic_oracle(self.obj, self.kw, self.P["specs"], self.inputs[B])[i]
            assert_exact(got, exported, "")
        except Exception:  # noqa: BLE001
            return ""
        return ("; jax.export with the same symbolic specs computes exactly nnxc's result: the "
                "difference comes from tracing with symbolic dims (README, Passes)")

    def check_close(self, pipeline: str):
        """XLA on the optimized graph: outputs within tolerance (updates may be pruned)."""
        g = self.optimized(pipeline)
        for B, (want, _, after) in self.refs().items():
            out, new_state = self.xla(g, B)
            at = f"[{pipeline}] B={B}" if B is not None else f"[{pipeline}]"
            self._compare(at, B, jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(want),
                          [(p, new_state[p]) for p, _ in g.updates], after)

    def _compare(self, at, B, got, want, updates, after):
        """Outputs and updates within tolerance of the oracle's (see ``assert_close``)."""
        if len(got) != len(want):
            raise Mismatch(f"{at}: {len(got)} outputs, want {len(want)}")
        for p, _ in updates:
            if p not in after:
                raise Mismatch(f"{at}: the graph updates {p!r}, which the model does not have")
        pairs = [(f"{at} output {i}", o, w, meta["rtol"], ("out", i))
                 for i, (o, w, meta) in enumerate(zip(got, want, self.P["outputs"]))]
        pairs += [(f"{at} update {p}", o, after[p], 1e-5, ("state", p)) for p, o in updates]
        for what, o, w, rtol, key in pairs:
            try:  # the Monte Carlo runs cost a compile: only when the plain tolerance fails
                assert_close(o, w, what, rtol)
            except Mismatch:
                sens_out, sens_state = self.sensitivity(B)
                sens = sens_out[key[1]] if key[0] == "out" else sens_state.get(key[1])
                assert_close(o, w, what, rtol, sens)

    def check_onnx(self):
        """ONNX export of the graph optimized with PROGRAM['onnx_pipeline'], run in onnxruntime."""
        import onnxruntime as ort
        pipeline = self.P["onnx_pipeline"]
        try:
            g = self.optimized(pipeline)
        except Exception as e:  # noqa: BLE001
            if pipeline in self.stages:  # that stage reports it
                raise Skipped(f"optimize(g, {pipeline!r}) fails") from e
            raise
        model = nnxc.export_onnx(g)
        refs = self.refs()
        feeds = [[_host(x) for x in jax.tree_util.tree_leaves(self.inputs[B])] for B in refs]
        names, runs = onnx_runs(model.SerializeToString(), feeds)
        for (B, (want, _, after)), flat, got in zip(refs.items(), feeds, runs):
            if len(names) != len(flat):
                raise Mismatch(f"ONNX model has inputs {names}, the program takes {len(flat)} array(s)")
            if isinstance(got, str):
                raise OrtRefused(f"onnxruntime cannot run the model at B={B}: {got}")
            at = f"[onnx/{pipeline}] B={B}" if B is not None else f"[onnx/{pipeline}]"
            leaves = jax.tree_util.tree_leaves(want)
            if len(got) != len(leaves) + len(g.updates):
                raise Mismatch(f"{at}: {len(got)} ONNX outputs, want {len(leaves)} outputs and "
                               f"{len(g.updates)} updates")
            updates = [(p, o) for (p, _), o in zip(g.updates, got[len(leaves):])
                       if p not in after or after[p].dtype.kind in "fiub"]
            try:
                self._compare(at, B, got[:len(leaves)], leaves, updates, after)
            except Mismatch as e:
                for fused, how in ((True, "jitted with max/min reductions propagating NaN"),
                                   (False, "op by op (no fusion, no FMA contraction)")):
                    ieee_out, ieee_state = ieee_oracle(self.obj, self.kw, self.inputs[B], fused)
                    try:
                        self._compare(at, B, got[:len(leaves)], ieee_out, updates, {**after, **ieee_state})
                    except Mismatch:
                        continue
                    raise XlaOnly(f"{e}; JAX's own evaluation of the program {how} computes what "
                                  "ONNX does: only XLA:CPU's compiled program differs") from None
                raise

    def check_roundtrip(self):
        """Text and JSON forms of the traced and optimized graphs read back to the same text."""
        graphs = [("traced", self.graph())]
        for pipeline in ("default", "inference"):
            try:
                graphs.append((pipeline, self.optimized(pipeline)))
            except Exception:  # noqa: BLE001 - reported by that pipeline's own stage
                pass
        for what, g in graphs:
            nnxc.ir.verify(g)
            text = str(g)
            back = str(nnxc.ir.parse(text))
            if back != text:
                raise Mismatch(f"[{what}] parse(print(g)) prints differently: {_first_diff(text, back)}")
            back = str(nnxc.ir.from_json(nnxc.ir.to_json(g)))
            if back != text:
                raise Mismatch(f"[{what}] from_json(to_json(g)) prints differently: {_first_diff(text, back)}")

    def run_stage(self, stage: str):
        if stage in EXACT_STAGES:
            self.check_exact(stage)
        elif stage in ("fast", "inference"):
            self.check_close(stage)
        elif stage == "onnx":
            self.check_onnx()
        elif stage == "roundtrip":
            self.check_roundtrip()
        else:
            raise ValueError(f"unknown stage {stage!r}")


def _first_diff(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}:\n  printed: {x}\n  re-read: {y}"
    return f"{len(la)} vs {len(lb)} lines"


def classify(stage: str, exc: BaseException) -> str:
    """ok / refused / mismatch / crash / ort_refused / invalid / xla_only / skipped for an exception
    at a stage."""
    if isinstance(exc, Mismatch):
        return "mismatch"
    if isinstance(exc, OrtRefused):
        return "ort_refused"
    if isinstance(exc, InvalidProgram):
        return "invalid"
    if isinstance(exc, Skipped):
        return "skipped"
    if isinstance(exc, XlaOnly):
        return "xla_only"
    if isinstance(exc, nnxc.UnsupportedOpError):
        # a rule's internal error is reported as a refusal, but it is an nnxc bug
        return "crash" if "internal error" in str(exc) else "refused"
    if isinstance(exc, nnxc.NnxcError) and not isinstance(exc, nnxc.VerifyError) \
            and stage in ("trace", "onnx") and "nnxc bug" not in str(exc):
        return "refused"  # a clear error for something nnxc does not handle
    return "crash"


def error_name(exc: BaseException) -> str:
    """The exception type; for an internal error reported as a refusal, the inner type."""
    import re
    m = re.search(r"internal error in its \w+ rule \((\w+)", str(exc))
    return f"{type(exc).__name__}[internal {m.group(1)}]" if m else type(exc).__name__


def run_checks(program_ns: dict, stages=DEFAULT_STAGES, raise_first: bool = False,
               on_stage=None) -> list:
    """Run ``stages`` on a program module's namespace: [(stage, kind, exception or None)].

    A failure of building, the oracle or tracing ends the list (stage ``trace``).
    ``on_stage(stage)`` is called as each stage starts."""
    results = []
    if on_stage:
        on_stage("trace")
    try:
        run = Run(program_ns)
        run.refs()
        run.graph()
    except Exception as e:  # noqa: BLE001
        if raise_first:
            raise
        return [("trace", classify("trace", e), e)]
    order = [s for s in STAGES if s in stages]
    run.stages = set(order)
    for stage in order:
        if on_stage:
            on_stage(stage)
        try:
            run.run_stage(stage)
            results.append((stage, "ok", None))
        except Exception as e:  # noqa: BLE001
            if raise_first:
                raise
            results.append((stage, classify(stage, e), e))
    return results
# ==== HARNESS END ====


# ---------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------

NP = {"f32": "float32", "f16": "float16", "i32": "int32", "bool": "bool"}
JNP = {"f32": "jnp.float32", "f16": "jnp.float16", "i32": "jnp.int32", "bool": "jnp.bool_"}
ORDER = {"bool": 0, "i32": 1, "f16": 2, "f32": 3}
EPS = {"f32": 6e-8, "f16": 5e-4, "i32": 0.0, "bool": 0.0}
BIG = {"f32": 1e6, "f16": 300.0}       # growth ops squash their operand above this
SYM_MAX = {"B": 3, "T": 4}              # the largest size each symbolic dim is run at (T = B + 1)


def sym(d) -> bool:
    return isinstance(d, str)


def promote(*dtypes: str) -> str:
    return max(dtypes, key=ORDER.__getitem__)


@dataclass
class Val:
    """A value of the program: name, shape (ints, or "B" / "T" for symbolic dims), dtype, and
    what the generator needs to know about it: ``exact`` (bit-identical on every backend:
    inputs, constants and data movement of them), ``fragile`` (may flip discontinuously when
    rounding differs, e.g. a comparison of computed floats: the checks run more Monte Carlo
    rounding runs for programs with such outputs), ``mag`` (a rough bound on its finite
    magnitude, to keep the program clear of overflow), ``nan`` (may hold NaN/inf), ``lowp``
    (f16 was involved: the checks use f16 tolerances)."""

    name: str
    shape: tuple
    dtype: str
    exact: bool = False
    fragile: bool = False
    mag: float = 4.0
    nan: bool = False
    lowp: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def isfloat(self) -> bool:
        return self.dtype in ("f32", "f16")

    @property
    def empty(self) -> bool:
        return 0 in self.shape

    @property
    def size(self) -> int:
        return math.prod(SYM_MAX.get(d, d) for d in self.shape)

    def __str__(self) -> str:
        return self.name


@dataclass
class Stmt:
    """One statement of the program body (possibly a multi-line block)."""

    lines: list
    outs: list
    tag: str
    init: list = field(default_factory=list)   # NNX __init__ lines (layers, variables)


def shape_src(shape) -> str:
    parts = [str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def broadcast(a: tuple, b: tuple):
    """The broadcast shape of two shapes, or None when they do not broadcast."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return tuple(out)


def _fmt(x: float) -> str:
    return repr(float(x))


class Gen:
    """Builds one random program as a list of statements over typed values."""

    def __init__(self, seed: int):
        self.seed = seed
        r = self.r = random.Random(seed)
        self.kind = r.choices(["function", "nnx", "linen"], [45, 40, 15])[0]
        self.fdt = "f16" if r.random() < 0.12 else "f32"
        self.symbolic = r.random() < 0.6
        self.inputs: list[Val] = []
        self.vals: list[Val] = []
        self.stmts: list[Stmt] = []
        self.consts: dict[str, str] = {}
        self.n = 0
        self.depth = 0
        self.coerce_fragile = False
        self.reusable: list = []  # NNX layers a second call may reuse: (attr, in features, out features)
        self.onnx_pipeline = r.choice(["none", "default", "inference"])
        self.special = r.random() < 0.2      # float inputs hold NaN, +-inf, +-0 and huge values
        self.empty = r.random() < 0.05       # one input dim is 0

    # -- naming and values ---------------------------------------------------------
    def fresh(self, prefix="v") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, shape, dtype: str, scale: float = 1.0) -> Val:
        name = f"C{len(self.consts)}"
        expr = f"_c({self.seed * 1000 + len(self.consts)}, {shape_src(shape)}, {NP[dtype]!r})"
        if scale != 1.0:
            expr += f" * {_fmt(scale)}"
        if dtype == "f16" and scale != 1.0:
            expr = f"({expr}).astype(np.float16)"
        self.consts[name] = expr
        mag = 8.0 if dtype == "i32" else 4.0 * scale
        return Val(name, tuple(shape), dtype, exact=True, mag=mag)

    def emit(self, lines, outs, tag: str, init=()):
        if isinstance(lines, str):
            lines = [lines]
        self.stmts.append(Stmt(list(lines), list(outs), tag, list(init)))
        self.vals.extend(outs)
        return outs[0] if len(outs) == 1 else outs

    def new(self, expr: str, shape, dtype: str, tag: str, srcs=(), init=(), **flags) -> Val:
        """Emit ``vN = expr``. ``fragile`` and ``lowp`` hold when given or when any source has
        them; ``nan`` defaults to the sources' (sanitizers pass nan=False); ``exact`` needs
        exact sources."""
        v = Val(self.fresh(), tuple(shape), dtype)
        v.fragile = flags.pop("fragile", False) or any(s.fragile for s in srcs)
        v.nan = flags.pop("nan") if "nan" in flags else any(s.nan for s in srcs)
        v.lowp = flags.pop("lowp", False) or dtype == "f16" or any(s.lowp for s in srcs)
        v.exact = flags.pop("exact", False) and all(s.exact for s in srcs)
        v.mag = float(flags.pop("mag", max([s.mag for s in srcs] or [1.0])))
        assert not flags, flags
        return self.emit(f"{v.name} = {expr}", [v], tag, init)

    def pick(self, pred=lambda v: True, recent: bool = True, empty: bool = False):
        """A value satisfying ``pred``, most often a recent one; zero-size values only when
        ``empty`` (the ops that take them say so)."""
        cands = [v for v in self.vals if pred(v) and (empty or not v.empty)]
        if not cands:
            return None
        if recent and self.r.random() < 0.7:
            k = min(int(self.r.expovariate(0.6)), len(cands) - 1)
            return cands[-1 - k]
        return self.r.choice(cands)

    def pick_float(self, pred=lambda v: True, empty: bool = False):
        return self.pick(lambda v: v.isfloat and pred(v), empty=empty)

    def squash(self, x: Val, limit: float) -> Val:
        """``x`` itself, or a bounded version of it when it may exceed ``limit``."""
        if x.mag <= limit and not x.nan:
            return x
        if not x.isfloat:  # tanh of an integer array is f32: keep the dtype the caller promoted
            bound = max(1, int(limit))
            return self.new(f"jnp.clip({x}, -{bound}, {bound})", x.shape, x.dtype, "squash", [x],
                            mag=float(bound))
        if x.nan:
            return self.new(f"jnp.nan_to_num(jnp.clip({x}, -3.0, 3.0))", x.shape, x.dtype, "squash",
                            [x], mag=3.0, nan=False)
        return self.new(f"jnp.tanh({x})", x.shape, x.dtype, "squash", [x], mag=1.0)

    def dim(self, d) -> int:
        return SYM_MAX.get(d, d)

    def int_axes(self, v: Val, min_size=1):
        return [i for i, d in enumerate(v.shape) if not sym(d) and d >= min_size]

    # -- program layout --------------------------------------------------------------
    def make_inputs(self):
        r = self.r
        n = r.choices([1, 2, 3], [45, 40, 15])[0]
        if self.kind != "function" and r.random() < 0.5:
            rank = r.choice([3, 4])
        else:
            rank = r.choices([0, 1, 2, 3, 4], [3, 12, 45, 25, 15])[0]
        dims = [r.choice([1, 2, 3, 4, 4, 5, 6, 8, 8]) for _ in range(rank)]
        if rank and dims[-1] == 1 and r.random() < 0.7:
            dims[-1] = r.choice([4, 8])
        if self.empty and rank >= 2:
            dims[r.randrange(1, rank)] = 0
        first = tuple(["B"] + dims[1:]) if self.symbolic and rank else tuple(dims)
        if self.symbolic and rank >= 3 and r.random() < 0.3:  # a second symbolic dim: T = B + 1
            first = ("B", "T") + first[2:]
        shapes = [first]
        for _ in range(n - 1):
            mode = r.random()
            if mode < 0.45 or not first:
                s = first
            elif mode < 0.7:
                s = first[r.randrange(len(first)):]
            elif mode < 0.85:
                s = tuple(1 if (not sym(d) and r.random() < 0.4) else d for d in first)
            else:
                s = tuple([first[0]] + [r.choice([2, 3, 4])] if first else [3])
            shapes.append(s)
        for i, s in enumerate(shapes):
            if i == 0:
                dt = self.fdt
            else:
                dt = r.choices([self.fdt, "i32", "bool", "f16" if self.fdt == "f32" else "f32"],
                               [55, 25, 10, 10])[0]
            mag = {"i32": 8.0, "bool": 1.0}.get(dt, 4.5)
            special = self.special and dt in ("f32", "f16")
            self.inputs.append(Val(f"x{i}", s, dt, exact=True, mag=mag, lowp=dt == "f16", nan=special))
        self.vals = list(self.inputs)

    def generate(self):
        self.make_inputs()
        if not any(v.isfloat for v in self.vals):
            self.op_cast()
        budget = self.r.randint(3, 16)
        done = 0
        tries = 0
        while done < budget and tries < budget * 12:
            tries += 1
            done += self.run_op()
        self.outputs = self.choose_outputs()

    def run_op(self) -> bool:
        """Apply one random op; undo what it emitted when it does not apply."""
        op = self.choose_op()
        mark, nvals = len(self.stmts), len(self.vals)
        try:
            res = op()
        except OverflowError:  # a magnitude bound beyond Python floats: skip the op
            res = None
        if res is None:
            del self.stmts[mark:]
            del self.vals[nvals:]
            return False
        return True

    def choose_outputs(self) -> list:
        made = [v for s in self.stmts for v in s.outs if s.tag != "squash"] or self.inputs[:1]
        outs = [made[-1]]
        others = [v for v in made[:-1] if v not in outs]
        self.r.shuffle(others)
        outs += others[:self.r.choices([0, 1, 2], [50, 35, 15])[0]]
        return outs

    def choose_op(self):
        ops = [(w, f) for w, f, kinds, depth in OPS if self.kind in kinds and self.depth <= depth]
        return getattr(self, self.r.choices([f for _, f in ops], [w for w, _ in ops])[0])

    # ==== ops ======================================================================
    # Each op returns a Val (or a list) when it emitted something, None when it does not
    # apply to the values at hand.

    def op_unary(self):
        x = self.pick_float(empty=True)
        if x is None:
            return None
        r = self.r
        big = BIG[x.dtype]
        lim_exp = 10.0 if x.dtype == "f16" else 80.0
        name = r.choice(["exp", "log", "log1p", "rsqrt", "sqrt", "tanh", "sin", "cos", "erf",
                         "sigmoid", "abs", "neg", "square", "cube", "pow", "relu", "gelu",
                         "gelu_erf", "silu", "softplus", "leaky_relu", "elu", "floor", "round",
                         "sign", "recip", "clip", "expm1", "logistic", "relu6", "celu", "isfinite",
                         "erf_inv", "atan"])
        unsafe = r.random() < 0.2 and x.dtype == "f32"
        d = x.dtype
        if name in ("exp", "expm1"):
            if x.mag > lim_exp:
                x = self.squash(x, 1.0)
            m = math.exp(min(x.mag, 80.0))
            fn = "jnp.exp" if name == "exp" else "jnp.expm1"
            return self.new(f"{fn}({x})", x.shape, d, name, [x], mag=m)
        if name == "log":
            if unsafe:
                return self.new(f"jnp.log({x})", x.shape, d, "log_raw", [x], nan=True,
                                fragile=not x.exact, mag=max(105.0, math.log(x.mag + 1)))
            return self.new(f"jnp.log(jnp.abs({x}) + 1.0)", x.shape, d, name, [x],
                            mag=math.log(x.mag + 1) + 1e-3)
        if name == "log1p":
            return self.new(f"jnp.log1p(jnp.abs({x}))", x.shape, d, name, [x],
                            mag=math.log(x.mag + 1) + 1e-3)
        if name == "rsqrt":
            if unsafe:
                return self.new(f"lax.rsqrt({x})", x.shape, d, "rsqrt_raw", [x], nan=True,
                                fragile=not x.exact, mag=1e20)
            if x.mag > math.sqrt(big):
                x = self.squash(x, 1.0)
            return self.new(f"lax.rsqrt({x} * {x} + 1.0)", x.shape, d, name, [x], mag=1.0)
        if name == "sqrt":
            return self.new(f"jnp.sqrt(jnp.abs({x}))", x.shape, d, name, [x],
                            mag=math.sqrt(x.mag), fragile=x.fragile)
        if name in ("tanh", "sin", "cos", "erf", "sigmoid", "logistic", "atan"):
            fn = {"tanh": "jnp.tanh", "sin": "jnp.sin", "cos": "jnp.cos", "erf": "lax.erf",
                  "sigmoid": "jax.nn.sigmoid", "logistic": "lax.logistic",
                  "atan": "jnp.arctan"}[name]
            if name in ("sin", "cos") and x.mag > 1e4:
                x = self.squash(x, 1.0)
            return self.new(f"{fn}({x})", x.shape, d, name, [x], mag=1.6)
        if name in ("abs", "neg"):
            expr = f"jnp.abs({x})" if name == "abs" else f"-{x}"
            return self.new(expr, x.shape, d, name, [x], exact=True)
        if name in ("square", "cube"):
            if x.mag > (math.sqrt(big) if name == "square" else big ** (1 / 3)):
                x = self.squash(x, 1.0)
            p = 2 if name == "square" else 3
            expr = r.choice([f"jnp.square({x})" if p == 2 else f"{x} * {x} * {x}",
                             f"{x} ** {p}", f"lax.integer_pow({x}, {p})"])
            return self.new(expr, x.shape, d, name, [x], mag=x.mag ** p)
        if name == "pow":
            if unsafe:
                return self.new(f"{x} ** 0.5", x.shape, d, "pow_raw", [x], nan=True,
                                fragile=not x.exact, mag=math.sqrt(x.mag))
            if x.mag > 1e4:
                x = self.squash(x, 1.0)
            e = r.choice([1.5, 0.7, 2.5])
            return self.new(f"jnp.power(jnp.abs({x}) + 0.5, {e})", x.shape, d, name, [x],
                            mag=(x.mag + 0.5) ** e)
        if name in ("relu", "gelu", "gelu_erf", "silu", "softplus", "leaky_relu", "elu", "relu6",
                    "celu"):
            fn = {"relu": "jax.nn.relu({})", "gelu": "jax.nn.gelu({})",
                  "gelu_erf": "jax.nn.gelu({}, approximate=False)", "silu": "jax.nn.silu({})",
                  "softplus": "jax.nn.softplus({})", "leaky_relu": "jax.nn.leaky_relu({}, 0.1)",
                  "elu": "jax.nn.elu({})", "relu6": "jax.nn.relu6({})", "celu": "jax.nn.celu({})"}[name]
            return self.new(fn.format(x), x.shape, d, name, [x], mag=x.mag + 1,
                            exact=name == "relu")
        if name in ("floor", "round", "sign"):
            fn = {"floor": "jnp.floor", "round": "jnp.round", "sign": "jnp.sign"}[name]
            return self.new(f"{fn}({x})", x.shape, d, name, [x], mag=x.mag + 1,
                            fragile=not x.exact, exact=True)
        if name == "recip":
            if unsafe:
                return self.new(f"1.0 / {x}", x.shape, d, "recip_raw", [x], nan=True,
                                fragile=not x.exact, mag=1e38)
            return self.new(f"1.0 / (jnp.abs({x}) + 1.0)", x.shape, d, name, [x], mag=1.0)
        if name == "clip":
            lo, hi = r.choice([(-1.0, 1.0), (-0.5, 2.0), (0.0, 6.0)])
            expr = r.choice([f"jnp.clip({x}, {lo}, {hi})", f"lax.clamp({lo}, {x}, {hi})"]) \
                if d == "f32" else f"jnp.clip({x}, {lo}, {hi})"
            return self.new(expr, x.shape, d, name, [x], mag=max(abs(lo), abs(hi)), exact=True)
        if name == "isfinite":
            return self.new(f"jnp.isfinite({x})", x.shape, "bool", name, [x],
                            fragile=x.nan and not x.exact, mag=1.0, exact=True)
        if name == "erf_inv":
            return self.new(f"lax.erf_inv(jnp.tanh({x}) * 0.5)", x.shape, d, name, [x], mag=1.0)
        return None

    def partner(self, x: Val, pred=lambda v: True):
        """A value broadcast-compatible with ``x`` (often a constant or ``x`` itself)."""
        r = self.r
        cands = [v for v in self.vals if pred(v) and broadcast(x.shape, v.shape) is not None
                 and len(broadcast(x.shape, v.shape)) <= 4]
        roll = r.random()
        if cands and roll < 0.75:
            return r.choice(cands[-8:]) if r.random() < 0.7 else r.choice(cands)
        shape = x.shape[-r.randint(0, x.rank):] if x.rank else ()
        shape = tuple(1 if sym(d) else d for d in shape)
        if roll < 0.85:
            return None
        return self.const(shape, x.dtype if x.isfloat else self.fdt)

    def op_binary(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool", empty=True)
        if x is None:
            return None
        y = self.partner(x, lambda v: v.dtype != "bool")
        if y is None:
            s = r.choice([0.5, 2.0, -1.5, 3.0])
            name = r.choice(["add", "mul", "sub", "rsub", "div"])
            if x.dtype == "i32":
                s = int(s) or 2
            if name == "add":
                return self.new(f"{x} + {s!r}", x.shape, x.dtype, "add_s", [x], mag=x.mag + abs(s))
            if name == "sub":
                return self.new(f"{x} - {s!r}", x.shape, x.dtype, "sub_s", [x], mag=x.mag + abs(s))
            if name == "rsub":
                return self.new(f"{s!r} - {x}", x.shape, x.dtype, "rsub_s", [x], mag=x.mag + abs(s))
            if x.mag * abs(s) > BIG.get(x.dtype, 1e6):
                x = self.squash(x, 1.0) if x.isfloat else self.new(f"{x} % 97", x.shape, "i32",
                                                                     "mod_s", [x], mag=97, exact=True)
            if name == "div" and x.isfloat:
                return self.new(f"{x} / {s!r}", x.shape, x.dtype, "div_s", [x], mag=x.mag / abs(s))
            return self.new(f"{x} * {s!r}", x.shape, x.dtype, "mul_s", [x], mag=x.mag * abs(s), exact=x.dtype == "i32")
        shape = broadcast(x.shape, y.shape)
        d = promote(x.dtype, y.dtype)
        if d == "i32":
            return self.int_binary(x, y, shape)
        name = r.choice(["add", "sub", "mul", "div", "div_raw", "max", "min", "pow", "atan2",
                         "rem", "hypot"])
        if name in ("mul", "pow", "hypot") and x.mag * y.mag > BIG[d]:
            x, y = self.squash(x, 1.0), self.squash(y, 1.0)
        if name == "add":
            return self.new(f"{x} + {y}", shape, d, name, [x, y], mag=x.mag + y.mag)
        if name == "sub":
            return self.new(f"{x} - {y}", shape, d, name, [x, y], mag=x.mag + y.mag)
        if name == "mul":
            return self.new(f"{x} * {y}", shape, d, name, [x, y], mag=x.mag * y.mag)
        if name == "div":
            return self.new(f"{x} / (jnp.abs({y}) + 1.0)", shape, d, name, [x, y], mag=x.mag)
        if name == "div_raw":
            return self.new(f"{x} / {y}", shape, d, name, [x, y], nan=True,
                            fragile=not (x.exact and y.exact), mag=1e38)
        if name in ("max", "min"):
            fn = r.choice([f"jnp.maximum", "lax.max"]) if name == "max" else r.choice(["jnp.minimum", "lax.min"])
            if fn.startswith("lax") and (x.dtype != y.dtype or x.shape != y.shape):
                fn = "jnp" + fn[3:]
                fn = fn.replace("max", "maximum").replace("min", "minimum")
            return self.new(f"{fn}({x}, {y})", shape, d, name, [x, y], mag=max(x.mag, y.mag), exact=True)
        if name == "pow":
            y2 = self.squash(y, 2.0)
            if x.mag > 1e3:
                x = self.squash(x, 1.0)
            return self.new(f"jnp.power(jnp.abs({x}) + 0.5, {y2})", shape, d, name, [x, y2],
                            mag=(x.mag + 0.5) ** y2.mag + 2 ** y2.mag)
        if name == "atan2":
            return self.new(f"jnp.arctan2({x}, {y})", shape, d, name, [x, y], mag=3.2,
                            fragile=not (x.exact and y.exact))
        if name == "rem":
            return self.new(f"jnp.remainder({x}, jnp.abs({y}) + 1.0)", shape, d, name, [x, y],
                            mag=y.mag + 1, fragile=not (x.exact and y.exact))
        if name == "hypot":
            return self.new(f"jnp.sqrt({x} * {x} + {y} * {y})", shape, d, name, [x, y],
                            mag=x.mag + y.mag)
        return None

    def op_int(self):
        """Integer arithmetic between two int32 values (or an int32 value and a constant)."""
        x = self.pick(lambda v: v.dtype == "i32")
        if x is None:
            f = self.pick(lambda v: v.dtype != "i32")
            if f is None:
                return None
            if f.isfloat:
                x = self.new(f"jnp.nan_to_num(jnp.clip({f}, -8.0, 8.0)).astype(jnp.int32)", f.shape, "i32",
                             "f2i", [f], fragile=not f.exact, exact=True, mag=8, nan=False)
            else:
                x = self.new(f"{f}.astype(jnp.int32)", f.shape, "i32", "b2i", [f], exact=True, mag=1)
        y = self.partner(x, lambda v: v.dtype == "i32")
        if y is None or y.dtype != "i32":
            shape = tuple(1 if sym(d) else d for d in x.shape[-1:])
            y = self.const(shape, "i32")
        return self.int_binary(x, y, broadcast(x.shape, y.shape))

    def int_binary(self, x: Val, y: Val, shape):
        r = self.r
        if x.mag * y.mag > 2 ** 28:
            x = self.new(f"{x} % 101", x.shape, "i32", "mod_s", [x], mag=101, exact=True)
        name = r.choice(["add", "sub", "mul", "floordiv", "mod", "max", "min", "and", "or", "xor",
                         "shl", "shr", "lax_div", "lax_rem", "where"])
        E = dict(exact=True)
        if name in ("add", "sub"):
            return self.new(f"{x} {'+' if name == 'add' else '-'} {y}", shape, "i32", name, [x, y],
                            mag=x.mag + y.mag, **E)
        if name == "mul":
            return self.new(f"{x} * {y}", shape, "i32", name, [x, y], mag=x.mag * y.mag, **E)
        if name == "floordiv":
            return self.new(f"{x} // (jnp.abs({y}) + 1)", shape, "i32", name, [x, y], mag=x.mag, **E)
        if name == "mod":
            return self.new(f"{x} % (jnp.abs({y}) + 1)", shape, "i32", name, [x, y], mag=y.mag + 1, **E)
        if name in ("lax_div", "lax_rem"):  # C semantics (truncation); lax wants equal shapes
            fn = name[4:]
            args = f"{x}, jnp.abs({y}) + 1"
            if x.shape != y.shape:
                args = f"*jnp.broadcast_arrays({args})"
            return self.new(f"lax.{fn}({args})", shape, "i32", name, [x, y],
                            mag=x.mag if fn == "div" else y.mag + 1, **E)
        if name in ("max", "min"):
            return self.new(f"jnp.{name}imum({x}, {y})", shape, "i32", name, [x, y],
                            mag=max(x.mag, y.mag), **E)
        if name in ("and", "or", "xor"):
            if x.dtype != y.dtype:
                return None
            op = {"and": "&", "or": "|", "xor": "^"}[name]
            return self.new(f"{x} {op} {y}", shape, "i32", name, [x, y], mag=2 ** 31, **E)
        if name == "shl":
            if x.mag > 2 ** 20:
                return None
            k = r.choice([1, 3])
            return self.new(f"{x} << {k}", x.shape, "i32", name, [x], mag=x.mag * 2 ** k, **E)
        if name == "shr":
            k = r.choice([1, 2])
            expr = r.choice([f"{x} >> {k}", f"lax.shift_right_logical({x}, jnp.int32({k}))"]) \
                if x.dtype == "i32" else f"{x} >> {k}"
            return self.new(expr, x.shape, "i32", name, [x], mag=2 ** 31 if "logical" in expr else x.mag, **E)
        if name == "where":
            return self.new(f"jnp.where({x} > {y}, {x}, {y} * 2)", shape, "i32", name, [x, y],
                            mag=max(x.mag, 2 * y.mag), **E)
        return None

    def op_int_unary(self):
        x = self.pick(lambda v: v.dtype == "i32")
        if x is None:
            return None
        name = self.r.choice(["neg", "abs", "sign", "not", "clip", "mod", "popcount", "square"])
        E = dict(exact=True)
        if name == "neg":
            return self.new(f"-{x}", x.shape, "i32", name, [x], **E)
        if name == "abs":
            return self.new(f"jnp.abs({x})", x.shape, "i32", name, [x], **E)
        if name == "sign":
            return self.new(f"jnp.sign({x})", x.shape, "i32", name, [x], mag=1, **E)
        if name == "not":
            return self.new(f"~{x}", x.shape, "i32", name, [x], mag=x.mag + 1, **E)
        if name == "clip":
            return self.new(f"jnp.clip({x}, -3, 5)", x.shape, "i32", name, [x], mag=5, **E)
        if name == "mod":
            k = self.r.choice([2, 3, 7])
            return self.new(f"{x} % {k}", x.shape, "i32", name, [x], mag=k, **E)
        if name == "popcount":
            return self.new(f"lax.population_count({x})", x.shape, "i32", name, [x], mag=32, **E)
        if name == "square" and x.mag < 2 ** 14:
            return self.new(f"{x} * {x}", x.shape, "i32", name, [x], mag=x.mag ** 2, **E)
        return None

    def op_compare(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool", empty=True)
        if x is None:
            return None
        op = r.choice(["<", "<=", ">", ">=", "==", "!="])
        if r.random() < 0.5:
            y = self.partner(x, lambda v: v.dtype != "bool")
        else:
            y = None
        if y is None:
            c = r.choice([0, 1, -1, 2]) if x.dtype == "i32" else r.choice([0.0, 0.5, -0.25])
            if op in ("==", "!=") and x.isfloat:
                op = ">"
            return self.new(f"{x} {op} {c!r}", x.shape, "bool", "cmp", [x], fragile=not x.exact,
                            exact=True, mag=1)
        shape = broadcast(x.shape, y.shape)
        return self.new(f"{x} {op} {y}", shape, "bool", "cmp", [x, y],
                        fragile=not (x.exact and y.exact), exact=True, mag=1)

    def op_bool(self):
        r = self.r
        c = self.pick(lambda v: v.dtype == "bool")
        if c is None:
            return None
        name = r.choice(["and", "or", "xor", "not", "any", "all", "logical_xor"])
        if name == "not":
            return self.new(r.choice([f"~{c}", f"jnp.logical_not({c})"]), c.shape, "bool", name, [c],
                            exact=True, mag=1)
        if name in ("any", "all"):
            axes = self.reduce_axes(c)
            expr, shape = self.reduce_expr(f"jnp.{name}", c, axes)
            return self.new(expr, shape, "bool", name, [c], exact=True, mag=1)
        d = self.pick(lambda v: v.dtype == "bool" and broadcast(v.shape, c.shape) is not None)
        shape = broadcast(c.shape, d.shape)
        if name == "logical_xor":
            return self.new(f"jnp.logical_xor({c}, {d})", shape, "bool", name, [c, d], exact=True, mag=1)
        op = {"and": "&", "or": "|", "xor": "^"}[name]
        return self.new(f"{c} {op} {d}", shape, "bool", name, [c, d], exact=True, mag=1)

    def op_where(self):
        c = self.pick(lambda v: v.dtype == "bool")
        if c is None:
            c = self.op_compare()
            if c is None:
                return None
        x = self.pick(lambda v: v.dtype != "bool" and broadcast(v.shape, c.shape) is not None)
        if x is None:
            return None
        y = self.pick(lambda v: v.dtype != "bool" and broadcast(v.shape, broadcast(x.shape, c.shape)) is not None)
        if y is None or self.r.random() < 0.3:
            y_src = "0.0" if x.isfloat else "0"
            shape = broadcast(x.shape, c.shape)
            return self.new(f"jnp.where({c}, {x}, {y_src})", shape, x.dtype, "where", [c, x], exact=True)
        shape = broadcast(broadcast(x.shape, c.shape), y.shape)
        d = promote(x.dtype, y.dtype)
        return self.new(f"jnp.where({c}, {x}, {y})", shape, d, "where", [c, x, y], exact=True,
                        mag=max(x.mag, y.mag))

    def op_cast(self):
        r = self.r
        x = self.pick(empty=True)
        if x is None:
            return None
        if x.isfloat:
            choice = r.choice(["int", "int", "bool", "other", "bitcast"])
            if choice == "int":
                if x.nan and r.random() < 0.3:  # XLA saturates: NaN -> 0, +-inf -> int32 max/min
                    return self.new(f"{x}.astype(jnp.int32)", x.shape, "i32", "f2i_sat", [x],
                                    fragile=not x.exact, exact=True, nan=False, mag=2 ** 31)
                if x.nan:
                    return self.new(f"jnp.nan_to_num(jnp.clip({x}, -1000.0, 1000.0)).astype(jnp.int32)",
                                    x.shape, "i32", "f2i", [x], fragile=not x.exact, exact=True,
                                    nan=False, mag=1000)
                if x.mag < 1e4:
                    expr = r.choice([f"{x}.astype(jnp.int32)",
                                     f"lax.convert_element_type({x}, jnp.int32)"])
                else:
                    expr = f"jnp.clip({x}, -1000.0, 1000.0).astype(jnp.int32)"
                return self.new(expr, x.shape, "i32", "f2i", [x], fragile=not x.exact, exact=True,
                                mag=min(x.mag, 1000))
            if choice == "bool":
                return self.new(f"{x}.astype(bool)", x.shape, "bool", "f2b", [x],
                                fragile=not x.exact, exact=True, mag=1)
            if choice == "bitcast":
                if x.dtype != "f32" or x.nan:
                    return None
                return self.new(f"lax.bitcast_convert_type({x}, jnp.int32) % 1024", x.shape, "i32",
                                "bitcast", [x], fragile=not x.exact, exact=True, mag=1024)
            other = "f16" if x.dtype == "f32" else "f32"
            if other == "f16" and x.mag > 6e4:
                x = self.squash(x, 1.0)
            return self.new(f"{x}.astype({JNP[other]})", x.shape, other, "f2f", [x],
                            lowp=True, exact=other == "f32")
        target = self.fdt if r.random() < 0.8 else ("i32" if x.dtype == "bool" else "bool")
        if target == "bool":
            return self.new(f"{x}.astype(bool)", x.shape, "bool", "i2b", [x], exact=True, mag=1)
        if target == "i32":
            return self.new(f"{x}.astype(jnp.int32)", x.shape, "i32", "b2i", [x], exact=True, mag=1)
        exact = x.mag <= 2 ** 11
        return self.new(f"{x}.astype({JNP[target]})", x.shape, target, "i2f", [x], exact=exact,
                        mag=x.mag)

    # -- reductions --------------------------------------------------------------------
    def reduce_axes(self, x: Val):
        r = self.r
        if x.rank == 0:
            return None
        roll = r.random()
        if roll < 0.15:
            return None
        if roll < 0.75 or x.rank == 1:
            return (r.randrange(x.rank),)
        k = r.randint(2, x.rank)
        return tuple(sorted(r.sample(range(x.rank), k)))

    def reduce_expr(self, fn: str, x: Val, axes, keep=None):
        keep = self.r.random() < 0.35 if keep is None else keep
        if axes is None:
            shape = tuple(1 for _ in x.shape) if keep else ()
            ax = ""
        else:
            shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
            a = axes[0] if len(axes) == 1 else axes
            if len(axes) == 1 and self.r.random() < 0.3:
                a = axes[0] - x.rank
            ax = f", axis={a}"
        kd = ", keepdims=True" if keep else ""
        return f"{fn}({x}{ax}{kd})", shape

    def reduced_count(self, x: Val, axes) -> int:
        if axes is None:
            return max(x.size, 1)
        return max(math.prod(self.dim(x.shape[a]) for a in axes), 1)

    def op_reduce(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool", empty=True)
        if x is None:
            return None
        if x.empty:  # max/min/arg* of nothing are errors in JAX; sums and means are not
            axes = self.reduce_axes(x)
            fn = r.choice(["jnp.sum", "jnp.mean"])
            expr, shape = self.reduce_expr(fn, x, axes)
            return self.new(expr, shape, x.dtype if fn == "jnp.sum" or x.isfloat else "f32",
                            "sum" if fn == "jnp.sum" else "mean", [x], nan=x.nan or fn == "jnp.mean")
        axes = self.reduce_axes(x)
        n = self.reduced_count(x, axes)
        if x.dtype == "i32":
            name = r.choice(["sum", "max", "min", "prod", "argmax", "argmin", "count"])
            if name == "prod":
                if x.mag ** n > 2 ** 28:
                    x = self.new(f"jnp.clip({x}, -2, 2)", x.shape, "i32", "clip", [x], mag=2, exact=True)
                    if 2 ** n > 2 ** 28:
                        return None
            if name in ("argmax", "argmin"):
                return self.argminmax(x, name)
            if name == "count":
                expr, shape = self.reduce_expr("jnp.count_nonzero", x, axes)
                return self.new(expr, shape, "i32", name, [x], exact=True, mag=n)
            expr, shape = self.reduce_expr(f"jnp.{name}", x, axes)
            mag = x.mag * n if name == "sum" else x.mag ** n if name == "prod" else x.mag
            return self.new(expr, shape, "i32", "i" + name, [x], exact=True, mag=mag)
        name = r.choice(["sum", "mean", "max", "min", "prod", "var", "std", "logsumexp", "argmax",
                         "argmin", "norm", "amax_lax"])
        if name in ("argmax", "argmin"):
            return self.argminmax(x, name)
        if x.rank == 0 and name in ("var", "std", "norm"):
            return None
        if name == "amax_lax":
            if axes is None:
                axes = tuple(range(x.rank))
            fn = r.choice(["lax.reduce_max", "lax.reduce_min", "lax.reduce_sum"])
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
            mag = x.mag * n if fn.endswith("sum") else x.mag
            return self.new(f"{fn}({x}, {tuple(axes)!r})", shape, x.dtype, fn[4:], [x], mag=mag, exact=not fn.endswith("sum"))
        if name == "prod":
            x = self.squash(x, 1.0)
            expr, shape = self.reduce_expr("jnp.prod", x, axes)
            return self.new(expr.replace(f"({x}", f"(1.0 + 0.5 * {x}", 1), shape, x.dtype, name, [x],
                            mag=1.5 ** n)
        if name in ("var", "std") and x.mag ** 2 > BIG[x.dtype]:
            x = self.squash(x, 1.0)
        if name == "logsumexp":
            expr, shape = self.reduce_expr("jax.nn.logsumexp", x, axes)
            return self.new(expr, shape, x.dtype, name, [x], mag=x.mag + math.log(n) + 1)
        if name == "norm":
            if x.mag ** 2 * n > BIG[x.dtype]:
                x = self.squash(x, 1.0)
            if axes is not None and len(axes) > 2:
                axes = axes[:2]
            expr, shape = self.reduce_expr("jnp.linalg.norm", x, axes)
            return self.new(expr, shape, x.dtype, name, [x], mag=x.mag * math.sqrt(n) + 1)
        fn = "jnp." + name
        expr, shape = self.reduce_expr(fn, x, axes)
        if name == "sum":
            mag = x.mag * n
        elif name == "mean":
            mag = x.mag
        elif name in ("max", "min"):
            mag = x.mag
        else:  # var, std
            mag = x.mag ** 2 * 4
            if name == "std":
                mag = 2 * x.mag
        return self.new(expr, shape, x.dtype, name, [x], mag=mag, exact=name in ("max", "min"))

    def argminmax(self, x: Val, name: str):
        if x.rank == 0:
            return None
        ax = self.r.randrange(x.rank)
        shape = tuple(d for i, d in enumerate(x.shape) if i != ax)
        return self.new(f"jnp.{name}({x}, axis={ax})", shape, "i32", name, [x],
                        fragile=not x.exact or x.nan, exact=True, mag=self.dim(x.shape[ax]))

    def op_scan_ops(self):
        """cumsum / cumprod / cummax / sort / argsort / top_k."""
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool" and v.rank >= 1)
        if x is None:
            return None
        ax = r.randrange(x.rank)
        n = self.dim(x.shape[ax])
        name = r.choice(["cumsum", "cumsum", "cumsum_rev", "cummax", "cumprod", "sort", "sort_desc",
                         "argsort", "top_k", "cumlogsumexp"])
        d = x.dtype
        if name == "cumsum":
            return self.new(f"jnp.cumsum({x}, axis={ax})", x.shape, d, name, [x], mag=x.mag * n, exact=d == "i32")
        if name == "cumsum_rev":
            return self.new(f"lax.cumsum({x}, axis={ax}, reverse=True)", x.shape, d, name, [x],
                            mag=x.mag * n,
                            exact=d == "i32")
        if name == "cummax":
            fn = r.choice(["lax.cummax", "lax.cummin"])
            return self.new(f"{fn}({x}, axis={ax})", x.shape, d, name, [x], exact=True)
        if name == "cumlogsumexp":
            if d != "f32":
                return None
            return self.new(f"lax.cumlogsumexp({x}, axis={ax})", x.shape, d, name, [x],
                            mag=x.mag + math.log(n) + 1)
        if name == "cumprod":
            if d == "i32":
                if 2 ** n > 2 ** 20:
                    return None
                return self.new(f"jnp.cumprod(jnp.clip({x}, -2, 2), axis={ax})", x.shape, d, name,
                                [x], mag=2 ** n, exact=True)
            x = self.squash(x, 1.0)
            return self.new(f"jnp.cumprod(1.0 + 0.5 * {x}, axis={ax})", x.shape, d, name, [x],
                            mag=1.5 ** n)
        if name == "sort":
            return self.new(f"jnp.sort({x}, axis={ax})", x.shape, d, name, [x], exact=True,
                            fragile=x.nan and not x.exact)
        if name == "sort_desc":
            return self.new(f"-jnp.sort(-{x}, axis={ax})", x.shape, d, name, [x], exact=True,
                            fragile=x.nan and not x.exact)
        if name == "argsort":
            return self.new(f"jnp.argsort({x}, axis={ax})", x.shape, "i32", name, [x], exact=True,
                            fragile=not x.exact, mag=n)
        if name == "top_k":
            if sym(x.shape[-1]):
                return None
            if x.nan and not x.exact:  # lax.top_k orders NaNs by their sign bit (XLA's total
                # order), and the sign of a computed NaN is unspecified: XLA's erf makes it +,
                # its neg flips it, its rewrites move it; nnxc does not promise NaN signs
                x = self.new(f"jnp.nan_to_num({x})", x.shape, d, "squash", [x], mag=max(x.mag, 3.4e38),
                             nan=False)
            k = r.randint(1, x.shape[-1])
            shape = x.shape[:-1] + (k,)
            vals = Val(self.fresh(), shape, d, exact=x.exact, fragile=x.fragile or (x.nan and not x.exact),
                       mag=x.mag, nan=x.nan, lowp=x.lowp)
            idx = Val(self.fresh(), shape, "i32", exact=True, fragile=x.fragile or not x.exact, mag=x.shape[-1])
            return self.emit(f"{vals}, {idx} = lax.top_k({x}, {k})", [vals, idx], "top_k")
        return None

    # -- composites written by hand and via jax.nn ----------------------------------
    def op_softmax(self):
        r = self.r
        x = self.pick_float(lambda v: v.rank >= 1)
        if x is None:
            return None
        ax = r.choice([-1, -1, r.randrange(x.rank)])
        n = self.dim(x.shape[ax])
        style = r.choice(["jax", "log", "hand", "hand_nomax"])
        d = x.dtype
        if style == "jax":
            return self.new(f"jax.nn.softmax({x}, axis={ax})", x.shape, d, "softmax", [x], mag=1.0)
        if style == "log":
            return self.new(f"jax.nn.log_softmax({x}, axis={ax})", x.shape, d, "log_softmax", [x],
                            mag=2 * x.mag + math.log(n) + 1)
        if style == "hand_nomax":
            x = self.squash(x, 1.0) if x.mag > (10 if d == "f16" else 60) else x
            e = self.new(f"jnp.exp({x})", x.shape, d, "exp", [x], mag=math.exp(x.mag))
        else:
            m = self.new(f"jnp.max({x}, axis={ax}, keepdims=True)", self.keep(x.shape, ax), d, "max",
                         [x], exact=True)
            e = self.new(f"jnp.exp({x} - {m})", x.shape, d, "exp", [x, m], mag=1.0)
        s = self.new(f"jnp.sum({e}, axis={ax}, keepdims=True)", self.keep(x.shape, ax), d, "sum", [e],
                     mag=e.mag * n)
        return self.new(f"{e} / {s}", x.shape, d, "softmax_hand", [e, s], mag=1.0)

    def keep(self, shape, ax):
        return tuple(1 if i == ax % len(shape) else dd for i, dd in enumerate(shape))

    def op_activation_hand(self):
        r = self.r
        x = self.pick_float()
        if x is None:
            return None
        if x.mag > (30 if x.dtype == "f16" else 1e4):
            x = self.squash(x, 1.0)
        style = r.choice(["gelu_tanh", "gelu_erf", "silu", "silu_exp", "mish", "swish_beta"])
        d = x.dtype
        kw = dict(mag=x.mag + 1)
        if style == "gelu_tanh":
            return self.new(f"0.5 * {x} * (1.0 + jnp.tanh(0.7978845608028654 * ({x} + 0.044715 * {x} ** 3)))",
                            x.shape, d, style, [x], **kw)
        if style == "gelu_erf":
            return self.new(f"0.5 * {x} * (1.0 + lax.erf({x} / np.sqrt(2.0).astype(np.{NP[d]})))",
                            x.shape, d, style, [x], **kw)
        if style == "silu":
            return self.new(f"{x} * jax.nn.sigmoid({x})", x.shape, d, style, [x], **kw)
        if style == "silu_exp":
            return self.new(f"{x} / (1.0 + jnp.exp(-{x}))", x.shape, d, style, [x], **kw)
        if style == "mish":
            return self.new(f"{x} * jnp.tanh(jax.nn.softplus({x}))", x.shape, d, style, [x], **kw)
        return self.new(f"{x} * jax.nn.sigmoid(1.702 * {x})", x.shape, d, style, [x], **kw)

    def op_norm_hand(self):
        r = self.r
        x = self.pick_float(lambda v: v.rank >= 1 and not sym(v.shape[-1]))
        if x is None:
            return None
        if x.mag ** 2 > BIG[x.dtype]:
            x = self.squash(x, 1.0)
        n = x.shape[-1]
        d = x.dtype
        style = r.choice(["ln", "ln_var", "rms", "standardize", "ln_affine", "rms_affine"])
        mag = math.sqrt(n) + 1
        if style in ("ln", "ln_affine"):
            m = self.new(f"jnp.mean({x}, axis=-1, keepdims=True)", x.shape[:-1] + (1,), d, "mean", [x])
            c = self.new(f"{x} - {m}", x.shape, d, "sub", [x, m], mag=2 * x.mag)
            v = self.new(f"jnp.mean({c} * {c}, axis=-1, keepdims=True)", x.shape[:-1] + (1,), d, "mean",
                         [c], mag=4 * x.mag ** 2)
            y = self.new(f"{c} * lax.rsqrt({v} + 1e-5)", x.shape, d, "ln_hand", [c, v], mag=mag)
        elif style == "ln_var":
            y = self.new(f"({x} - jnp.mean({x}, -1, keepdims=True)) / jnp.sqrt(jnp.var({x}, -1, keepdims=True) + 1e-5)",
                         x.shape, d, "ln_hand", [x], mag=mag)
        elif style == "standardize":
            y = self.new(f"jax.nn.standardize({x}, axis=-1, epsilon=1e-5)", x.shape, d, "standardize",
                         [x], mag=mag)
        else:
            ms = self.new(f"jnp.mean(jnp.square({x}), axis=-1, keepdims=True)", x.shape[:-1] + (1,), d,
                          "mean", [x], mag=x.mag ** 2)
            y = self.new(f"{x} * lax.rsqrt({ms} + 1e-6)", x.shape, d, "rms_hand", [x, ms], mag=mag)
        if style.endswith("affine"):
            g = self.const((n,), d, 0.5)
            b = self.const((n,), d, 0.5)
            y = self.new(f"{y} * (1.0 + {g}) + {b}", x.shape, d, "affine", [y, g, b], mag=mag * 3 + 2)
        return y

    def op_attention_hand(self):
        r = self.r
        x = self.pick_float(lambda v: v.rank in (2, 3) and not sym(v.shape[-1]) and not sym(v.shape[-2]))
        if x is None:
            return None
        x = self.squash(x, 10.0)
        dm = x.shape[-1]
        dk = r.choice([2, 4, 8])
        d = x.dtype
        wq, wk, wv = (self.const((dm, dk), d, 1.0 / math.sqrt(dm)) for _ in range(3))
        lq = x.shape[-2]
        q = self.new(f"{x} @ {wq}", x.shape[:-1] + (dk,), d, "matmul", [x, wq], mag=x.mag * 4)
        k = self.new(f"{x} @ {wk}", x.shape[:-1] + (dk,), d, "matmul", [x, wk], mag=x.mag * 4)
        v = self.new(f"{x} @ {wv}", x.shape[:-1] + (dk,), d, "matmul", [x, wv], mag=x.mag * 4)
        if x.rank == 3 and r.random() < 0.4 and d == "f32":  # CPU has no f16 dot_product_attention
            qs = f"{q}[:, :, None, :]"
            ks = f"{k}[:, :, None, :]"
            vs = f"{v}[:, :, None, :]"
            causal = r.random() < 0.5
            o = self.new(f"jax.nn.dot_product_attention({qs}, {ks}, {vs}, is_causal={causal})[:, :, 0, :]",
                         v.shape, d, "dpa", [q, k, v], mag=v.mag)
            return o
        s = self.new(f"{q} @ jnp.swapaxes({k}, -1, -2) / {_fmt(math.sqrt(dk))}",
                     x.shape[:-1] + (lq,), d, "scores", [q, k], mag=q.mag * k.mag * math.sqrt(dk))
        if r.random() < 0.4 and not sym(lq):
            mask = f"jnp.tril(jnp.ones(({lq}, {lq}), bool))"
            s = self.new(f"jnp.where({mask}, {s}, -1e9 if {s}.dtype == jnp.float32 else -1e4)", s.shape, d,
                         "mask", [s])
            s.mag = max(s.mag, 1e9)
        p = self.new(f"jax.nn.softmax({s}, axis=-1)", s.shape, d, "softmax", [s], mag=1.0)
        return self.new(f"{p} @ {v}", v.shape, d, "attn_out", [p, v], mag=v.mag)

    # -- shapes -------------------------------------------------------------------------
    def op_reshape(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1)
        if x is None:
            return None
        shape = list(x.shape)
        mode = r.choice(["split", "merge", "unsqueeze", "flatten", "squeeze"])
        ints = [i for i, d in enumerate(shape) if not sym(d)]
        if mode == "split":
            cands = [i for i in ints if shape[i] in (4, 6, 8)]
            if not cands:
                return None
            i = r.choice(cands)
            a = 2
            shape[i:i + 1] = [a, shape[i] // a]
        elif mode == "merge":
            cands = [i for i in range(len(shape) - 1) if not sym(shape[i]) and not sym(shape[i + 1])]
            if not cands:
                return None
            i = r.choice(cands)
            shape[i:i + 2] = [shape[i] * shape[i + 1]]
        elif mode == "unsqueeze":
            pos = r.randint(0, len(shape))
            shape.insert(pos, 1)
            if r.random() < 0.5:
                return self.new(f"jnp.expand_dims({x}, {pos})", shape, x.dtype, "expand_dims", [x], exact=True)
        elif mode == "squeeze":
            ones = [i for i in ints if shape[i] == 1]
            if not ones:
                return None
            i = r.choice(ones)
            del shape[i]
            if r.random() < 0.5:
                return self.new(f"jnp.squeeze({x}, axis={i})", shape, x.dtype, "squeeze", [x], exact=True)
        else:
            if any(sym(d) for d in shape):
                if shape[0] != "B" or any(sym(d) for d in shape[1:]):
                    return None
                shape = ["B", math.prod(shape[1:])]
            else:
                shape = [math.prod(shape)]
            if r.random() < 0.5:
                expr = f"{x}.reshape({'B, ' if 'B' in shape else ''}-1)"
                return self.new(expr, shape, x.dtype, "reshape", [x], exact=True)
        if len(shape) > 5:
            return None
        return self.new(f"{x}.reshape{shape_src(shape)}" if shape else f"{x}.reshape(())", shape,
                        x.dtype, "reshape", [x], exact=True)

    def op_transpose(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 2, empty=True)
        if x is None:
            return None
        perm = list(range(x.rank))
        while perm == list(range(x.rank)):
            r.shuffle(perm)
        shape = tuple(x.shape[p] for p in perm)
        if x.rank == 2:
            expr = r.choice([f"{x}.T", f"jnp.transpose({x})", f"jnp.swapaxes({x}, 0, 1)"])
        elif r.random() < 0.3:
            i, j = r.sample(range(x.rank), 2)
            perm = list(range(x.rank))
            perm[i], perm[j] = perm[j], perm[i]
            shape = tuple(x.shape[p] for p in perm)
            expr = f"jnp.swapaxes({x}, {i}, {j})"
        else:
            expr = f"jnp.transpose({x}, {tuple(perm)!r})"
        return self.new(expr, shape, x.dtype, "transpose", [x], exact=True)

    def op_broadcast(self):
        r = self.r
        x = self.pick(lambda v: v.rank <= 3)
        if x is None:
            return None
        shape = list(x.shape)
        ones = [i for i, d in enumerate(shape) if d == 1]
        if ones and r.random() < 0.6:
            shape[r.choice(ones)] = r.choice([2, 3])
        else:
            shape.insert(0, r.choice([1, 2, 3]))
        if r.random() < 0.3:
            expr = f"jnp.broadcast_to({x}, {shape_src(shape)})"
        else:
            dims = tuple(range(len(shape) - x.rank, len(shape)))
            expr = f"lax.broadcast_in_dim({x}, {shape_src(shape)}, {dims!r})"
        return self.new(expr, shape, x.dtype, "broadcast", [x], exact=True)

    def op_concat(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1, empty=True)
        if x is None:
            return None
        axes = self.int_axes(x)
        if not axes:
            return None
        ax = r.choice(axes)
        others = [v for v in self.vals if v.rank == x.rank and v is not x and v.dtype == x.dtype
                  and all(a == b for i, (a, b) in enumerate(zip(v.shape, x.shape)) if i != ax)
                  and not sym(v.shape[ax])]
        y = r.choice(others) if others else x
        total = x.shape[ax] + y.shape[ax]
        if total > 32:
            return None
        if r.random() < 0.3:
            shape = x.shape[:ax] + (2,) + x.shape[ax:]
            if y.shape != x.shape or len(shape) > 5:
                return None
            return self.new(f"jnp.stack([{x}, {y}], axis={ax})", shape, x.dtype, "stack", [x, y],
                            exact=True, mag=max(x.mag, y.mag))
        shape = x.shape[:ax] + (total,) + x.shape[ax + 1:]
        fn = r.choice(["jnp.concatenate", "lax.concatenate"])
        expr = f"jnp.concatenate([{x}, {y}], axis={ax})" if fn == "jnp.concatenate" \
            else f"lax.concatenate([{x}, {y}], {ax})"
        return self.new(expr, shape, x.dtype, "concat", [x, y], exact=True, mag=max(x.mag, y.mag))

    def op_slice(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1 and self.int_axes(v, 2))
        if x is None:
            return None
        ax = r.choice(self.int_axes(x, 2))
        n = x.shape[ax]
        mode = r.choice(["range", "step", "index", "neg", "dynamic", "lax"])
        pre = "".join(":, " for _ in range(ax))
        if mode == "range":
            a = r.randrange(n - 1)
            b = r.randint(a + 1, n)
            shape = x.shape[:ax] + (b - a,) + x.shape[ax + 1:]
            return self.new(f"{x}[{pre}{a}:{b}]", shape, x.dtype, "slice", [x], exact=True)
        if mode == "step":
            s = r.choice([2, 3])
            a = r.randrange(min(s, n))
            shape = x.shape[:ax] + (len(range(a, n, s)),) + x.shape[ax + 1:]
            return self.new(f"{x}[{pre}{a}::{s}]", shape, x.dtype, "slice_step", [x], exact=True)
        if mode == "neg":
            shape = x.shape[:ax] + (n - 1,) + x.shape[ax + 1:]
            return self.new(f"{x}[{pre}:-1]", shape, x.dtype, "slice", [x], exact=True)
        if mode == "index":
            i = r.randrange(-n, n)
            shape = x.shape[:ax] + x.shape[ax + 1:]
            return self.new(f"{x}[{pre}{i}]", shape, x.dtype, "index", [x], exact=True)
        if mode == "lax":
            starts = [0] * x.rank
            limits = list(x.shape)
            a = r.randrange(n - 1)
            starts[ax] = a
            shape = x.shape[:ax] + (n - a,) + x.shape[ax + 1:]
            lim = "(" + ", ".join(f"{x}.shape[{i}]" if sym(d) else str(d) for i, d in enumerate(limits)) + ("," if x.rank == 1 else "") + ")"
            return self.new(f"lax.slice({x}, {tuple(starts)!r}, {lim})", shape, x.dtype, "lax_slice", [x],
                            exact=True)
        # dynamic: start from an int scalar value of the program, or a computed one
        s = self.pick(lambda v: v.dtype == "i32" and v.rank == 0)
        size = r.randint(1, n)
        shape = x.shape[:ax] + (size,) + x.shape[ax + 1:]
        if s is None:
            src = self.pick(lambda v: v.dtype == "i32")
            if src is None:
                return self.new(f"lax.dynamic_slice_in_dim({x}, {r.randrange(n)}, {size}, axis={ax})", shape,
                                x.dtype, "dynamic_slice", [x], exact=True)
            s = self.new(f"jnp.sum({src}) % {n}", (), "i32", "isum", [src], exact=True, mag=n)
        return self.new(f"lax.dynamic_slice_in_dim({x}, {s}, {size}, axis={ax})", shape, x.dtype,
                        "dynamic_slice", [x, s], exact=True)

    def op_pad(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1 and self.int_axes(v), empty=True)
        if x is None:
            return None
        mode = r.choice(["constant", "constant", "edge", "reflect", "lax"])
        pads = []
        shape = []
        for d in x.shape:
            if sym(d) or r.random() < 0.4:
                pads.append((0, 0))
                shape.append(d)
                continue
            lo, hi = r.randint(0, 2), r.randint(0, 2)
            if (mode == "reflect" and (lo >= d or hi >= d)) or (mode == "edge" and d == 0):
                lo, hi = 0, 0
            pads.append((lo, hi))
            shape.append(d + lo + hi)
        if mode == "lax":
            cfg = []
            shape = []
            val = "0.0" if x.isfloat else ("0" if x.dtype == "i32" else "False")
            for d in x.shape:
                if sym(d):
                    cfg.append((0, 0, 0))
                    shape.append(d)
                    continue
                lo, hi, it = r.randint(-1, 2), r.randint(-1, 2), r.choice([0, 0, 1])
                size = d + lo + hi + max(d - 1, 0) * it
                if size < 1:
                    lo, hi, it, size = 0, 0, 0, d
                cfg.append((lo, hi, it))
                shape.append(size)
            pad_val = f"jnp.array({val}, {x}.dtype)"
            return self.new(f"lax.pad({x}, {pad_val}, {cfg!r})", shape, x.dtype, "lax_pad", [x], exact=True)
        if mode == "constant":
            cv = r.choice(["", ", constant_values=1"]) if x.dtype != "bool" else ""
            return self.new(f"jnp.pad({x}, {tuple(pads)!r}{cv})", shape, x.dtype, "pad", [x], exact=True)
        return self.new(f"jnp.pad({x}, {tuple(pads)!r}, mode={mode!r})", shape, x.dtype, "pad_" + mode, [x],
                        exact=True)

    def op_gather(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1 and self.int_axes(v, 2))
        if x is None:
            return None
        ax = r.choice(self.int_axes(x, 2))
        n = x.shape[ax]
        mode = r.choice(["const", "const_fancy", "dynamic", "take_along", "onehot"])
        if mode == "const":
            k = r.randint(1, 5)
            idx = [r.randrange(-n if r.random() < 0.3 else 0, n) for _ in range(k)]
            shape = x.shape[:ax] + (k,) + x.shape[ax + 1:]
            return self.new(f"jnp.take({x}, jnp.array({idx!r}), axis={ax})", shape, x.dtype, "take", [x],
                            exact=True)
        if mode == "const_fancy":
            k = r.randint(1, 4)
            idx = [r.randrange(n) for _ in range(k)]
            pre = "".join(":, " for _ in range(ax))
            shape = x.shape[:ax] + (k,) + x.shape[ax + 1:]
            return self.new(f"{x}[{pre}jnp.array({idx!r})]", shape, x.dtype, "fancy_index", [x], exact=True)
        if mode == "onehot":
            a = self.pick(lambda v: v.dtype == "i32" and v.rank <= 3)
            if a is None:
                return None
            k = r.choice([3, 4, 5])
            if r.random() < 0.5:
                expr = f"jax.nn.one_hot({a}, {k})"
            else:
                expr = f"jax.nn.one_hot(jnp.clip({a}, 0, {k - 1}), {k}, dtype={JNP[self.fdt]})"
            return self.new(expr, a.shape + (k,), "f32" if "dtype" not in expr else self.fdt, "one_hot",
                            [a], exact=True, mag=1)
        a = self.pick(lambda v: v.dtype == "i32" and v.rank <= 2)
        if a is None:
            return None
        if mode == "take_along":
            if a.shape != x.shape:
                return None
            return self.new(f"jnp.take_along_axis({x}, jnp.clip({a}, 0, {n - 1}), axis={ax})", x.shape,
                            x.dtype, "take_along", [x, a], exact=True)
        shape = x.shape[:ax] + a.shape + x.shape[ax + 1:]
        if len(shape) > 5:
            return None
        expr = r.choice([f"jnp.take({x}, jnp.clip({a}, 0, {n - 1}), axis={ax})",
                         f"jnp.take({x}, {a} % {n}, axis={ax})"])
        return self.new(expr, shape, x.dtype, "take_dyn", [x, a], exact=True)

    def op_scatter(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1 and v.dtype != "bool" and self.int_axes(v, 2))
        if x is None:
            return None
        ax = r.choice(self.int_axes(x, 2))
        n = x.shape[ax]
        pre = "".join(":, " for _ in range(ax))
        how = r.choice(["set", "add", "mul", "max", "min"])
        srcs = [x]
        s = self.pick(lambda v: v.dtype == "i32" and v.rank == 0)
        if s is not None and r.random() < 0.25:  # dynamic (clipped: XLA drops out-of-bounds updates)
            index, k = f"jnp.clip({s}, 0, {n - 1})", 1
            upd_shape = x.shape[:ax] + x.shape[ax + 1:]
            srcs.append(s)
        else:
            k = r.randint(1, n)
            idx = r.sample(range(n), k) if how == "set" else [r.randrange(n) for _ in range(k)]
            if k == 1 and r.random() < 0.3:
                index = str(idx[0])
                upd_shape = x.shape[:ax] + x.shape[ax + 1:]
            else:
                index = f"jnp.array({idx!r})"
                upd_shape = x.shape[:ax] + (k,) + x.shape[ax + 1:]
        y = self.pick(lambda v: v.dtype == x.dtype and broadcast(v.shape, upd_shape) == tuple(upd_shape))
        if y is None or r.random() < 0.3:
            y_src = r.choice(["2.0", "-1.0", "0.5"]) if x.isfloat else r.choice(["2", "-1"])
            ymag = abs(float(y_src))
        else:
            y_src, ymag = str(y), y.mag
            srcs.append(y)
        mag = {"set": max(x.mag, ymag), "add": x.mag + ymag * k, "mul": x.mag * ymag ** k,
               "max": max(x.mag, ymag), "min": max(x.mag, ymag)}[how]
        if mag > BIG.get(x.dtype, 2 ** 28):
            return None
        exact = how in ("set", "max", "min") or x.dtype == "i32"
        return self.new(f"{x}.at[{pre}{index}].{how}({y_src})", x.shape, x.dtype, "scatter_" + how, srcs,
                        exact=exact, mag=mag)

    def op_misc_shape(self):
        r = self.r
        x = self.pick(lambda v: v.rank >= 1)
        if x is None:
            return None
        mode = r.choice(["flip", "roll", "tile", "repeat", "arange", "rev"])
        axes = self.int_axes(x)
        if not axes:
            return None
        ax = r.choice(axes)
        if mode == "flip":
            return self.new(f"jnp.flip({x}, axis={ax})", x.shape, x.dtype, "flip", [x], exact=True)
        if mode == "rev":
            return self.new(f"lax.rev({x}, ({ax},))", x.shape, x.dtype, "rev", [x], exact=True)
        if mode == "roll":
            return self.new(f"jnp.roll({x}, {r.choice([1, -1, 2])}, axis={ax})", x.shape, x.dtype, "roll", [x],
                            exact=True)
        if mode == "tile":
            reps = [1] * x.rank
            reps[ax] = 2
            shape = tuple(d * 2 if i == ax else d for i, d in enumerate(x.shape))
            return self.new(f"jnp.tile({x}, {tuple(reps)!r})", shape, x.dtype, "tile", [x], exact=True)
        if mode == "repeat":
            shape = tuple(d * 2 if i == ax else d for i, d in enumerate(x.shape))
            return self.new(f"jnp.repeat({x}, 2, axis={ax})", shape, x.dtype, "repeat", [x], exact=True)
        if x.dtype == "bool":
            return None
        n = x.shape[-1]
        if sym(n):
            return None
        dt = JNP[x.dtype]
        return self.new(f"{x} + jnp.arange({n}, dtype={dt})", x.shape, x.dtype, "iota", [x],
                        mag=x.mag + n, exact=x.dtype == "i32")

    # -- contractions ---------------------------------------------------------------------
    def op_dot(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool" and v.rank >= 1 and not sym(v.shape[-1]))
        if x is None:
            return None
        if x.isfloat and x.mag > (100 if x.dtype == "f16" else 1e4):
            x = self.squash(x, 1.0)
        n = x.shape[-1]
        d = x.dtype
        mode = r.choice(["const", "const", "einsum", "self", "dot_general", "vec"])
        if mode in ("const", "einsum", "dot_general"):
            m = r.choice([1, 2, 4, 8])
            w = self.const((n, m), d, 1.0 / math.sqrt(n) if d != "i32" else 1.0)
            if d == "i32" and x.mag * 8 * n > 2 ** 28:
                return None
            shape = x.shape[:-1] + (m,)
            wm = 4.0 / math.sqrt(n) if d != "i32" else 8
            mag = x.mag * wm * n
            if mode == "const":
                expr = r.choice([f"{x} @ {w}", f"jnp.dot({x}, {w})", f"jnp.matmul({x}, {w})"])
            elif mode == "einsum":
                letters = "abcd"[:x.rank - 1]
                expr = f"jnp.einsum('{letters}i,ij->{letters}j', {x}, {w})"
            else:
                expr = f"lax.dot_general({x}, {w}, ((({x.rank - 1},), (0,)), ((), ())))"
            return self.new(expr, shape, d, "dot_" + mode, [x, w], mag=mag, exact=d == "i32")
        if mode == "vec":
            if x.rank != 1:
                return None
            y = self.pick(lambda v: v.shape == x.shape and v.dtype == d)
            if r.random() < 0.5:
                return self.new(f"jnp.dot({x}, {y})", (), d, "vdot", [x, y], mag=x.mag * y.mag * n, exact=d == "i32")
            if x.mag * y.mag > BIG.get(d, 2 ** 28):
                return None
            return self.new(f"jnp.outer({x}, {y})", (n, n), d, "outer", [x, y], mag=x.mag * y.mag, exact=d == "i32")
        # self: x @ y^T over the last axis, batched over the leading ones
        if x.rank < 2:
            return None
        y = self.pick(lambda v: v.shape == x.shape and v.dtype == d)
        if d == "i32" and x.mag * y.mag * n > 2 ** 28:
            return None
        if x.isfloat and y.mag > (100 if d == "f16" else 1e4):
            y = self.squash(y, 1.0)
        shape = x.shape[:-1] + (x.shape[-2],)
        lead = "abc"[:x.rank - 2]
        expr = r.choice([f"{x} @ jnp.swapaxes({y}, -1, -2)",
                         f"jnp.einsum('{lead}ik,{lead}jk->{lead}ij', {x}, {y})"])
        return self.new(expr, shape, d, "bmm", [x, y], mag=x.mag * y.mag * n, exact=d == "i32")

    # -- control flow ---------------------------------------------------------------------
    def body(self, params: list, n_ops: int):
        """Generate a nested body over ``params`` (plus closed-over outer values).

        Returns its statements and values; the caller renders them inside a def."""
        saved = (self.vals, self.stmts, self.depth)
        self.vals = [v for v in self.vals if v.rank <= 3][-10:] + list(params)
        self.stmts = []
        self.depth += 1
        made = 0
        tries = 0
        while made < n_ops and tries < 30:
            tries += 1
            made += self.run_op()
        stmts = self.stmts
        self.vals, self.stmts, self.depth = saved
        return stmts

    def coerce(self, v: Val, like: Val):
        """Code turning ``v`` into ``like``'s shape and dtype (bounded), for loop carries and
        branch results; and whether that conversion may flip under rounding."""
        e = str(v)
        floaty = v.isfloat
        if v.shape != like.shape:
            if broadcast(v.shape, like.shape) == tuple(like.shape):
                e = f"jnp.broadcast_to({e}, {like}.shape)"
            else:
                e = f"jnp.broadcast_to(jnp.mean({e}), {like}.shape)"  # float32 for ints/bools
                floaty = True
        fragile = False
        if like.isfloat:
            if not floaty:
                e = f"({e}).astype({JNP[like.dtype]})"
            e = f"jnp.tanh({e})"
        elif floaty:
            e = f"jnp.nan_to_num(jnp.clip({e}, -4.0, 4.0))"
            fragile = not v.exact or v.shape != like.shape
        elif v.dtype == "bool":
            e = f"({e}).astype(jnp.int32)"
        else:
            e = f"({e}) % 7"
        return f"({e}).astype({JNP[like.dtype]})", fragile

    def indent(self, stmts, n=4) -> list:
        return [" " * n + line for s in stmts for line in s.lines]

    def loop_carry(self):
        x = self.pick(lambda v: v.dtype != "bool" and v.rank <= 3)
        if x is None:
            return None
        if x.isfloat:
            x = self.squash(x, 4.0)
        return x

    def finish_body(self, inner, params, like: Val):
        """The body's result: its last value, and code for it shaped like ``like``."""
        outs = [v for s in inner for v in s.outs]
        v = outs[-1] if outs else params[0]
        expr, fragile = self.coerce(v, like)
        if fragile:
            self.coerce_fragile = True
        return v, expr

    def body_flags(self, inner, params) -> dict:
        vals = [v for s in inner for v in s.outs] + list(params)
        fragile, self.coerce_fragile = self.coerce_fragile, False
        return dict(fragile=fragile or any(v.fragile for v in vals), nan=any(v.nan for v in vals),
                    lowp=any(v.lowp for v in vals))

    def op_scan(self):
        r = self.r
        init = self.loop_carry()
        if init is None:
            return None
        xs = self.pick(lambda v: v.rank >= 1 and not sym(v.shape[0]) and v.dtype != "bool" and v.rank <= 3)
        if xs is None:
            length = r.choice([2, 3])
            xs = self.new(f"jnp.stack([{init}] * {length})", (length,) + init.shape, init.dtype, "stack",
                          [init], exact=True)
        k = self.n + 1
        c = Val(f"c{k}", init.shape, init.dtype, mag=init.mag + 2, lowp=init.lowp)
        xt = Val(f"xt{k}", xs.shape[1:], xs.dtype, exact=xs.exact, fragile=xs.fragile, mag=xs.mag, nan=xs.nan, lowp=xs.lowp)
        self.n += 1
        inner = self.body([c, xt], r.randint(1, 4))
        last, new_c = self.finish_body(inner, [c, xt], c)
        y = last if last.dtype != "bool" else c
        carry_expr = f"{c} * 0.5 + {new_c}" if c.isfloat else f"({c} + {new_c}) % 97"
        reverse = r.random() < 0.25
        lines = [f"def body{k}({c}, {xt}):"] + self.indent(inner) + [
            f"    return {carry_expr}, {y}",
            f"{{cout}}, {{ys}} = lax.scan(body{k}, {init}, {xs}{', reverse=True' if reverse else ''})"]
        flags = self.body_flags(inner, [c, xt, init, xs])
        cout = Val(self.fresh(), init.shape, init.dtype, mag=init.mag + 4 if c.isfloat else 97, **flags)
        ys = Val(self.fresh(), (xs.shape[0],) + y.shape, y.dtype, mag=max(y.mag, cout.mag), **flags)
        lines[-1] = lines[-1].format(cout=cout, ys=ys)
        return self.emit(lines, [cout, ys], "scan")

    def op_fori(self):
        r = self.r
        init = self.loop_carry()
        if init is None:
            return None
        k = self.n + 1
        self.n += 1
        i = Val(f"i{k}", (), "i32", exact=True, mag=4)
        c = Val(f"c{k}", init.shape, init.dtype, mag=init.mag + 2, lowp=init.lowp)
        inner = self.body([c, i], r.randint(1, 4))
        last, new_c = self.finish_body(inner, [c, i], c)
        carry_expr = f"{c} * 0.5 + {new_c}" if c.isfloat else f"({c} + {new_c}) % 97"
        n = r.choice([1, 2, 3, 4])
        style = r.choice(["fori", "fori", "while"])
        flags = self.body_flags(inner, [c, i, init])
        out = Val(self.fresh(), init.shape, init.dtype, mag=init.mag + 4 if c.isfloat else 97, **flags)
        if style == "fori":
            lines = [f"def body{k}({i}, {c}):"] + self.indent(inner) + [
                f"    return {carry_expr}",
                f"{out} = lax.fori_loop(0, {n}, body{k}, {init})"]
        else:
            lines = [f"def body{k}(state):", f"    {i}, {c} = state"] + self.indent(inner) + [
                f"    return {i} + 1, {carry_expr}",
                f"{out} = lax.while_loop(lambda s: s[0] < {n}, body{k}, (jnp.int32(0), {init}))[1]"]
        return self.emit(lines, [out], style)

    def op_cond(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool" and v.rank <= 3)
        if x is None:
            return None
        if x.isfloat:
            x = self.squash(x, 4.0)
        src = self.pick(lambda v: v.dtype != "bool" or True)
        k = self.n + 1
        self.n += 1
        if src.dtype == "bool":
            pred = f"jnp.any({src})"
        elif src.dtype == "i32":
            pred = f"jnp.sum({src}) > 2"
        else:
            pred = f"jnp.max({src}) > 0.5"
        pred_fragile = src.fragile or (src.isfloat and not src.exact) or (src.isfloat and src.nan)
        o = Val(f"o{k}", x.shape, x.dtype, exact=x.exact, mag=x.mag, lowp=x.lowp, nan=x.nan,
                fragile=x.fragile)
        style = r.choice(["cond", "cond", "switch"])
        nb = 2 if style == "cond" else 3
        branches = []
        for b in range(nb):
            inner = self.body([o], r.randint(0, 3))
            last, res = self.finish_body(inner, [o], o)
            branches.append((inner, res))
        flags = self.body_flags([s for inner, _ in branches for s in inner], [o, x])
        flags["fragile"] = flags["fragile"] or pred_fragile
        out = Val(self.fresh(), x.shape, x.dtype, mag=1.0 if x.isfloat else 7, **flags)
        lines = []
        for b, (inner, res) in enumerate(branches):
            lines += [f"def branch{k}_{b}({o}):"] + self.indent(inner) + [f"    return {res}"]
        if style == "cond":
            lines.append(f"{out} = lax.cond({pred}, branch{k}_0, branch{k}_1, {x})")
        else:
            if src.dtype == "i32":
                idx = f"jnp.sum({src}) % 5 - 1"
            else:
                idx = f"({pred}).astype(jnp.int32)"
            lines.append(f"{out} = lax.switch({idx}, [branch{k}_0, branch{k}_1, branch{k}_2], {x})")
        return self.emit(lines, [out], style)

    def op_vmap(self):
        r = self.r
        x = self.pick_float(lambda v: v.rank >= 2 and v.rank <= 3)
        if x is None:
            return None
        k = self.n + 1
        self.n += 1
        row = Val(f"row{k}", x.shape[1:], x.dtype, exact=x.exact, fragile=x.fragile, mag=x.mag, nan=x.nan, lowp=x.lowp)
        saved = self.vals
        self.vals = []  # no closures over batched outer values: keep it simple
        inner = self.body([row], r.randint(1, 3))
        self.vals = saved
        outs = [v for s in inner for v in s.outs]
        if not outs:
            return None
        last = outs[-1]
        flags = self.body_flags(inner, [row])
        out = Val(self.fresh(), (x.shape[0],) + last.shape, last.dtype, mag=last.mag, **flags)
        out.exact = False
        lines = [f"def rowfn{k}({row}):"] + self.indent(inner) + [f"    return {last}",
                                                                  f"{out} = jax.vmap(rowfn{k})({x})"]
        return self.emit(lines, [out], "vmap")

    # -- layers -----------------------------------------------------------------------------
    def layer_name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def layer_input(self, min_rank=1, max_rank=4, last_int=True):
        x = self.pick_float(lambda v: min_rank <= v.rank <= max_rank and (not last_int or not sym(v.shape[-1])))
        if x is None:
            return None
        return self.squash(x, 100.0 if x.dtype == "f16" else 1e4)

    def call_layer(self, name: str, ctor_nnx: str, ctor_linen: str, x: Val, shape, tag: str, extra_init=(),
                   call_args="", half=False, **flags):
        """Construct and call a layer (NNX: in __init__; Linen: inline); ``half`` computes it in
        float16 (``dtype=jnp.float16``, parameters stay float32)."""
        d = promote(x.dtype, "f32")
        if half:
            d = "f16"
            flags["lowp"] = True
            ctor_nnx = ctor_nnx[:-1] + (", " if not ctor_nnx.endswith("()") else "") + "dtype=jnp.float16)" \
                if ctor_nnx else ctor_nnx
            ctor_linen = ctor_linen[:-1] + (", " if not ctor_linen.endswith("()") else "") + "dtype=jnp.float16)"
        if self.kind == "nnx":
            init = [f"self.{name} = {ctor_nnx}"] + [ln.format(self=f"self.{name}") for ln in extra_init]
            expr = f"self.{name}({x}{call_args})"
        else:
            init = []
            expr = f"{ctor_linen[:-1]}{', ' if not ctor_linen.endswith('()') else ''}name={name!r})({x}{call_args})"
        return self.new(expr, shape, d, tag, [x], init=init, **flags)

    def op_linear(self):
        r = self.r
        x = self.layer_input()
        if x is None:
            return None
        n = x.shape[-1]
        m = r.choice([1, 3, 4, 8, 16])
        bias = r.random() < 0.8
        name = self.layer_name("linear" if self.kind == "nnx" else "dense")
        if self.kind == "nnx":
            self.reusable.append((name, n, m))
        mag = x.mag * 4 * math.sqrt(n) + 1
        return self.call_layer(
            name, f"nnx.Linear({n}, {m}, use_bias={bias}, rngs=rngs)",
            f"nn.Dense({m}, use_bias={bias})", x, x.shape[:-1] + (m,), "Linear", half=r.random() < 0.12,
            extra_init=["{self}.bias[...] = jnp.asarray(_c(%d, (%d,), 'float32')) * 0.1" % (self.n, m)] if bias else [],
            mag=mag)

    def op_conv(self):
        r = self.r
        x = self.layer_input(3, 4)
        if x is None:
            return None
        spatial = x.shape[1:-1]
        if any(sym(d) for d in spatial):
            return None
        c = x.shape[-1]
        nd = len(spatial)
        ksize = tuple(r.choice([1, 2, 3]) for _ in range(nd))
        strides = tuple(r.choice([1, 1, 2]) for _ in range(nd))
        dil = tuple(r.choice([1, 1, 2]) for _ in range(nd)) if all(s == 1 for s in strides) else (1,) * nd
        pad = r.choice(["SAME", "VALID", "explicit", "CIRCULAR" if self.kind == "nnx" else "SAME"])
        out_sp = []
        for n, k, s, dd in zip(spatial, ksize, strides, dil):
            ek = (k - 1) * dd + 1
            if pad in ("SAME", "CIRCULAR"):
                out_sp.append(-(-n // s))
            elif pad == "VALID":
                if n < ek:
                    return None
                out_sp.append((n - ek) // s + 1)
        if pad == "explicit":
            pads = tuple((r.randint(0, 2), r.randint(0, 2)) for _ in range(nd))
            out_sp = []
            for n, k, s, dd, (lo, hi) in zip(spatial, ksize, strides, dil, pads):
                ek = (k - 1) * dd + 1
                if n + lo + hi < ek:
                    return None
                out_sp.append((n + lo + hi - ek) // s + 1)
            pad_src = repr(pads)
        else:
            pad_src = repr(pad)
        groups = r.choice([g for g in (1, 2, c) if c % g == 0 and g <= c]) if r.random() < 0.3 else 1
        f = r.choice([g for g in (2, 4, 8) if g % groups == 0] or [groups])
        bias = r.random() < 0.8
        name = self.layer_name("conv")
        shape = (x.shape[0],) + tuple(out_sp) + (f,)
        fan = c // groups * math.prod(ksize)
        mag = x.mag * 4 * math.sqrt(fan) + 1
        args = f"kernel_size={ksize!r}, strides={strides!r}, padding={pad_src}"
        if dil != (1,) * nd:
            args += f", kernel_dilation={dil!r}"
        if groups != 1:
            args += f", feature_group_count={groups}"
        return self.call_layer(name, f"nnx.Conv({c}, {f}, {args}, use_bias={bias}, rngs=rngs)",
                               f"nn.Conv({f}, {args}, use_bias={bias})", x, shape, "Conv",
                               mag=mag, half=r.random() < 0.1)

    def op_conv_transpose(self):
        r = self.r
        x = self.layer_input(3, 4)
        if x is None or any(sym(d) or d < 1 for d in x.shape[1:]):
            return None
        spatial, c = x.shape[1:-1], x.shape[-1]
        nd = len(spatial)
        ksize = tuple(r.choice([1, 2, 3]) for _ in range(nd))
        strides = tuple(r.choice([1, 2]) for _ in range(nd))
        pad = r.choice(["SAME", "VALID"])
        f = r.choice([2, 4])
        from jax import lax
        dn = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[nd]
        out = jax.eval_shape(lambda a, k: lax.conv_transpose(a, k, strides, pad, dimension_numbers=dn),
                             jax.ShapeDtypeStruct((1, *spatial, c), "float32"),
                             jax.ShapeDtypeStruct((*ksize, c, f), "float32")).shape
        if any(d < 1 for d in out):
            return None
        name = self.layer_name("convt")
        args = f"kernel_size={ksize!r}, strides={strides!r}, padding={pad!r}"
        fan = c * math.prod(ksize)
        return self.call_layer(name, f"nnx.ConvTranspose({c}, {f}, {args}, rngs=rngs)",
                               f"nn.ConvTranspose({f}, {args})", x, (x.shape[0], *out[1:]),
                               "ConvTranspose", mag=x.mag * 4 * math.sqrt(fan) + 1)

    def op_norm_layer(self):
        r = self.r
        x = self.layer_input()
        if x is None:
            return None
        n = x.shape[-1]
        kind = r.choice(["LayerNorm", "LayerNorm", "RMSNorm", "BatchNorm", "BatchNorm", "GroupNorm"])
        if kind == "BatchNorm" and self.kind == "nnx":
            train = r.random() < 0.6
            mom = r.choice([0.9, 0.99])
            name = self.layer_name("bn")
            init = ["{self}.mean[...] = jnp.asarray(_c(%d, (%d,), 'float32')) * 0.5" % (self.n, n),
                    "{self}.var[...] = jnp.abs(jnp.asarray(_c(%d, (%d,), 'float32'))) + 0.5" % (self.n + 1, n),
                    "{self}.scale[...] = 1.0 + 0.2 * jnp.asarray(_c(%d, (%d,), 'float32'))" % (self.n + 2, n)]
            return self.call_layer(
                name, f"nnx.BatchNorm({n}, use_running_average={not train}, momentum={mom}, rngs=rngs)", "",
                x, x.shape, "BatchNorm_" + ("train" if train else "eval"), extra_init=init,
                mag=(x.mag + 2) * 3 if not train else 2 * math.sqrt(3 * 8) + 2)
        if kind == "BatchNorm":  # Linen: eval mode with its batch_stats
            name = self.layer_name("bn")
            return self.call_layer(name, "", "nn.BatchNorm(use_running_average=True)", x, x.shape,
                                   "BatchNorm_eval", mag=(x.mag + 2) * 3)
        if kind == "GroupNorm":
            groups = [g for g in (1, 2, 4) if n % g == 0 and g <= n]
            g = r.choice(groups)
            if x.rank < 2:
                return None
            name = self.layer_name("gn")
            size = math.prod(self.dim(dd) for dd in x.shape[1:])
            if self.kind == "nnx":
                return self.call_layer(name, f"nnx.GroupNorm({n}, num_groups={g}, rngs=rngs)", "", x, x.shape,
                                       "GroupNorm", mag=math.sqrt(size) + 1)
            return self.call_layer(name, "", f"nn.GroupNorm(num_groups={g})", x, x.shape, "GroupNorm",
                                   mag=math.sqrt(size) + 1)
        name = self.layer_name("ln" if kind == "LayerNorm" else "rms")
        init = ["{self}.scale[...] = 1.0 + 0.2 * jnp.asarray(_c(%d, (%d,), 'float32'))" % (self.n, n)]
        return self.call_layer(name, f"nnx.{kind}({n}, rngs=rngs)", f"nn.{kind}()", x, x.shape, kind,
                               extra_init=init, half=r.random() < 0.12, mag=(math.sqrt(n) + 1) * 1.6)

    def op_dropout(self):
        r = self.r
        x = self.layer_input(1, 4, last_int=False)
        if x is None:
            return None
        rate = r.choice([0.1, 0.5])
        name = self.layer_name("drop")
        train = r.random() < 0.75
        bdims = ""
        if x.rank >= 2 and r.random() < 0.3:
            bdims = ", broadcast_dims=(0,)"
        ctor = f"nnx.Dropout({rate}{bdims}, rngs=rngs)" if train else f"nnx.Dropout({rate}, deterministic=True)"
        init = [f"self.{name} = {ctor}"]
        return self.new(f"self.{name}({x})", x.shape, x.dtype, "Dropout_" + ("train" if train else "eval"), [x],
                        init=init, mag=x.mag / (1 - rate) if train else x.mag,
                        exact=not train)

    def op_attention_layer(self):
        r = self.r
        x = self.layer_input(3, 3)
        if x is None:
            return None
        f = x.shape[-1]
        heads = r.choice([h for h in (1, 2, 4) if f % h == 0])
        qkv = r.choice([q for q in (f, 4, 8) if q % heads == 0])
        name = self.layer_name("mha")
        causal = r.random() < 0.4
        call = ", decode=False" + (", mask=nnx.make_causal_mask(%s[..., 0])" % x if causal else "")
        if self.kind == "linen":
            call = ", mask=nn.make_causal_mask(%s[..., 0])" % x if causal else ""
        mag = x.mag * 4 * math.sqrt(f) * 4 * math.sqrt(qkv) + 1
        return self.call_layer(
            name, f"nnx.MultiHeadAttention({heads}, {f}, qkv_features={qkv}, decode=False, rngs=rngs)",
            f"nn.MultiHeadDotProductAttention(num_heads={heads}, qkv_features={qkv})", x, x.shape,
            "MultiHeadAttention", call_args=call, mag=mag)

    def op_embed(self):
        r = self.r
        a = self.pick(lambda v: v.dtype == "i32" and v.rank <= 3)
        if a is None:
            x = self.pick(lambda v: v.dtype != "i32" and v.rank <= 3)
            if x is None:
                return None
            a = self.new(f"jnp.nan_to_num(jnp.clip(jnp.abs({x}) * 3, 0.0, 100.0)).astype(jnp.int32)"
                         if x.isfloat else f"{x}.astype(jnp.int32)",
                         x.shape, "i32", "f2i", [x], fragile=not x.exact, exact=True, nan=False, mag=16)
        n = r.choice([5, 8, 16])
        f = r.choice([4, 8])
        name = self.layer_name("embed")
        idx = r.choice([f"jnp.clip({a}, 0, {n - 1})", f"{a} % {n}"])
        if self.kind == "nnx":
            init = [f"self.{name} = nnx.Embed({n}, {f}, rngs=rngs)"]
            expr = f"self.{name}({idx})"
        else:
            init = []
            expr = f"nn.Embed({n}, {f}, name={name!r})({idx})"
        return self.new(expr, a.shape + (f,), "f32", "Embed", [a], init=init, exact=True, mag=4.0)

    def op_rnn(self):
        r = self.r
        x = self.layer_input(3, 3)
        if x is None or sym(x.shape[1]):  # nnx.RNN scans over axis 1: a static length
            return None
        f = x.shape[-1]
        h = r.choice([2, 4, 8])
        cell = r.choice(["LSTMCell", "GRUCell", "SimpleCell"])
        name = self.layer_name("rnn")
        init = [f"self.{name} = nnx.RNN(nnx.{cell}({f}, {h}, rngs=rngs), rngs=rngs)"]
        return self.new(f"self.{name}({x})", x.shape[:-1] + (h,), "f32", cell, [x], init=init, mag=1.0)

    def op_pool(self):
        r = self.r
        x = self.layer_input(3, 4)
        if x is None or any(sym(d) for d in x.shape[1:]):
            return None
        spatial = x.shape[1:-1]
        win = tuple(r.choice([1, 2]) for _ in spatial)
        kind = r.choice(["max_pool", "avg_pool"])
        pad = r.choice(["VALID", "SAME"])
        if any(n < w for n, w in zip(spatial, win)):
            return None
        out = tuple((n - w) // w + 1 if pad == "VALID" else -(-n // w) for n, w in zip(spatial, win))
        mod = "nnx" if self.kind == "nnx" else "nn"
        return self.new(f"{mod}.{kind}({x}, {win!r}, strides={win!r}, padding={pad!r})",
                        (x.shape[0],) + out + (x.shape[-1],), x.dtype, kind, [x], exact=kind != "avg_pool")

    def op_reuse_layer(self):
        """Call an NNX layer a second time (shared weights) on another value."""
        if not self.reusable:
            return None
        name, n, m = self.r.choice(self.reusable)
        x = self.layer_input()
        if x is None or x.shape[-1] != n:
            return None
        return self.new(f"self.{name}({x})", x.shape[:-1] + (m,), "f32", "Linear_shared", [x],
                        mag=x.mag * 4 * math.sqrt(n) + 1)

    def op_sow(self):
        """``self.sow(nnx.Intermediate, ...)``: a variable the call creates."""
        x = self.pick(lambda v: v.dtype != "bool")
        if x is None:
            return None
        self.n += 1
        v = Val(self.fresh(), x.shape, x.dtype, exact=x.exact, fragile=x.fragile, mag=x.mag, nan=x.nan,
                lowp=x.lowp)
        lines = [f"self.sow(nnx.Intermediate, 'sown{self.n}', {x})", f"{v} = {x}"]
        return self.emit(lines, [v], "sow")

    def op_remat(self):
        """A computation under jax.checkpoint, or a user custom_jvp function."""
        x = self.pick_float(lambda v: v.mag < 1e4, empty=True)
        if x is None:
            return None
        if self.r.random() < 0.5:
            return self.new(f"jax.checkpoint(lambda a: jnp.sin(a) * 2.0 + a)({x})", x.shape, x.dtype,
                            "remat", [x], mag=x.mag + 2)
        return self.new(f"_softclip({x})", x.shape, x.dtype, "custom_jvp", [x], mag=2.0)

    def op_assoc_scan(self):
        r = self.r
        x = self.pick(lambda v: v.dtype != "bool" and self.int_axes(v, 2))
        if x is None:
            return None
        ax = r.choice(self.int_axes(x, 2))
        n = x.shape[ax]
        fn = r.choice(["jnp.add", "jnp.maximum", "jnp.minimum"])
        if fn == "jnp.add":
            x = self.squash(x, 1e4) if x.isfloat else x
            mag = x.mag * n
            if x.dtype == "i32" and mag > 2 ** 28:
                return None
        else:
            mag = x.mag
        return self.new(f"lax.associative_scan({fn}, {x}, axis={ax})", x.shape, x.dtype, "assoc_scan", [x],
                        mag=mag, exact=fn != "jnp.add" or x.dtype == "i32")

    def op_state(self):
        """A user variable updated by the call (NNX): running mean, counters."""
        r = self.r
        x = self.pick(lambda v: v.isfloat and v.rank >= 1 and not sym(v.shape[-1]))
        if x is None:
            return None
        n = x.shape[-1]
        name = self.layer_name("stat")
        cls = r.choice(["nnx.BatchStat", "Counter", "nnx.Variable"])
        x = self.squash(x, 1e3)
        axes = tuple(range(x.rank - 1))
        red = f"jnp.mean({x}, axis={axes!r})" if axes else str(x)
        init = [f"self.{name} = {cls}(jnp.zeros(({n},), jnp.float32))"]
        lines = [f"self.{name}[...] = self.{name}[...] * 0.9 + 0.1 * {red}",
                 f"{{v}} = self.{name}[...] + 0.0"]
        v = Val(self.fresh(), (n,), "f32", mag=x.mag + 1, fragile=x.fragile,
                nan=x.nan, lowp=x.lowp)
        lines[1] = lines[1].format(v=v)
        return self.emit(lines, [v], "state_update", init)


ALL = ("function", "nnx", "linen")
MOD = ("nnx", "linen")
# (weight, method, program kinds, deepest body nesting it may appear at: 0 = top level)
OPS = [
    (14, "op_unary", ALL, 9),
    (14, "op_binary", ALL, 9),
    (3, "op_int_unary", ALL, 9),
    (4, "op_int", ALL, 9),
    (5, "op_compare", ALL, 9),
    (2, "op_bool", ALL, 9),
    (4, "op_where", ALL, 9),
    (4, "op_cast", ALL, 9),
    (7, "op_reduce", ALL, 9),
    (4, "op_scan_ops", ALL, 9),
    (3, "op_softmax", ALL, 9),
    (3, "op_activation_hand", ALL, 9),
    (3, "op_norm_hand", ALL, 9),
    (1, "op_attention_hand", ALL, 0),
    (5, "op_reshape", ALL, 9),
    (3, "op_transpose", ALL, 9),
    (2, "op_broadcast", ALL, 9),
    (3, "op_concat", ALL, 9),
    (4, "op_slice", ALL, 9),
    (2, "op_pad", ALL, 9),
    (3, "op_gather", ALL, 9),
    (3, "op_scatter", ALL, 9),
    (2, "op_misc_shape", ALL, 9),
    (6, "op_dot", ALL, 9),
    (2, "op_scan", ALL, 1),
    (2, "op_fori", ALL, 1),
    (2, "op_cond", ALL, 1),
    (1, "op_vmap", ALL, 1),
    (12, "op_linear", MOD, 0),
    (5, "op_conv", MOD, 0),
    (2, "op_conv_transpose", MOD, 0),
    (9, "op_norm_layer", MOD, 0),
    (4, "op_dropout", ("nnx",), 0),
    (3, "op_attention_layer", MOD, 0),
    (3, "op_embed", MOD, 0),
    (2, "op_rnn", ("nnx",), 0),
    (3, "op_pool", MOD, 0),
    (2, "op_state", ("nnx",), 0),
    (2, "op_reuse_layer", ("nnx",), 0),
    (1, "op_sow", ("nnx",), 0),
    (1, "op_remat", ALL, 9),
    (1, "op_assoc_scan", ALL, 9),
]


# ---------------------------------------------------------------------------------------
# Programs: rendering, building, checking
# ---------------------------------------------------------------------------------------

HEADER = '''\
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax import nnx
import flax.linen as nn


def _c(seed, shape, dtype, special=False):
    """A deterministic random array (inputs and constants); ``special`` mixes in NaN, +-inf,
    +-0 and huge values."""
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        return rng.integers(-8, 8, size=shape).astype(np.int32)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    a = rng.standard_normal(shape).astype(dtype)
    if special:
        values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(dtype).max / 2], dtype)
        mask = rng.random(shape) < 0.25
        a[mask] = rng.choice(values, size=int(mask.sum()))
    return a


@jax.custom_jvp
def _softclip(x):
    """A user function with a custom derivative."""
    return jnp.tanh(x) * 2.0


_softclip.defjvp(lambda primals, tangents: (_softclip(primals[0]), tangents[0] * 2.0))
'''


@dataclass
class Program:
    """A generated program: ``source`` is a standalone module defining PROGRAM (specs, sizes,
    per-output check metadata), ``make_inputs(B)`` and ``build() -> (model, trace kwargs)``."""

    seed: int
    name: str
    kind: str
    source: str
    specs: list
    sizes: list
    outputs: list
    features: list
    gen: Gen = field(repr=False, default=None)
    stmts: list = field(repr=False, default=None)
    out_vals: list = field(repr=False, default=None)
    _ns: dict = field(repr=False, default=None)

    @property
    def ns(self) -> dict:
        """The program's module namespace (executed once)."""
        if self._ns is None:
            self._ns = load_source(self.source, self.name)
        return self._ns

    @property
    def model(self):
        return self.ns["build"]()[0]

    @property
    def trace_kwargs(self) -> dict:
        return self.ns["build"]()[1]

    def inputs(self, B=None) -> list:
        return self.ns["make_inputs"](B)

    @property
    def n_lines(self) -> int:
        return len(self.source.splitlines())


def load_source(source: str, name: str) -> dict:
    mod = types.ModuleType(name)
    mod.__file__ = f"<{name}>"
    code = compile(source, f"{name}.py", "exec")
    sys.modules[name] = mod  # Linen/NNX look classes up by module
    try:
        exec(code, mod.__dict__)
    finally:
        sys.modules.pop(name, None)
    return mod.__dict__


# statements kept even when their value is unused: they update the model's state
SIDE_EFFECTS = ("state_update", "sow", "BatchNorm_train", "Dropout_train")
_NAME = re.compile(r"\b([vx]\d+|C\d+|B|T)\b")


def _drop_dead_inner(stmts: list, outputs: list) -> list:
    """Statements with the dead ``vN = ...`` lines inside loop/branch bodies removed."""
    stmts = list(stmts)
    while True:
        text = "\n".join(ln for s in stmts for ln in s.lines) + " ".join(v.name for v in outputs)
        uses = {}
        for name in re.findall(r"\bv\d+\b", text):
            uses[name] = uses.get(name, 0) + 1
        changed = False
        for k, s in enumerate(stmts):
            keep = [ln for ln in s.lines if not (
                re.match(r"\s+(v\d+) = ", ln) and uses.get(re.match(r"\s+(v\d+) = ", ln).group(1)) == 1)]
            if len(keep) != len(s.lines):
                stmts[k] = Stmt(keep, s.outs, s.tag, s.init)
                changed = True
        if not changed:
            return stmts


def render(gen: Gen, stmts: list, outputs: list, seed: int, name: str, all_inputs: bool = True) -> tuple:
    """Source text of a program made of ``stmts`` returning ``outputs`` (dead code left out;
    with ``all_inputs=False`` also unused inputs and dead statements inside bodies)."""
    if not all_inputs:
        stmts = _drop_dead_inner(stmts, outputs)
    needed = {v.name for v in outputs}
    live = []
    for s in reversed(stmts):
        if any(v.name for v in s.outs if v.name in needed) or s.tag in SIDE_EFFECTS:
            live.append(s)
            for line in s.lines:
                needed.update(_NAME.findall(line))
    live.reverse()
    used_inputs = [v for v in gen.inputs if all_inputs or v.name in needed] or gen.inputs[:1]
    for dim, axis in (("B", 0), ("T", 1)):  # the body reads symbolic dims off an input
        if dim in needed and not any(v.shape[axis:axis + 1] == (dim,) for v in used_inputs):
            used_inputs = [v for v in gen.inputs if v.shape[axis:axis + 1] == (dim,)][:1] + used_inputs
    first_b = next((v for v in used_inputs if v.shape[:1] == ("B",)), None)
    first_t = next((v for v in used_inputs if v.shape[1:2] == ("T",)), None)
    symbolic = any(sym(d) for v in used_inputs for d in v.shape)
    sizes = [1, 3] if symbolic else [None]
    specs = [f"{v.dtype}[{','.join(str(d) for d in v.shape)}]" for v in used_inputs]
    out_meta = []
    for v in outputs:
        rtol = 1e-2 if v.lowp else 1e-5
        out_meta.append({"fragile": bool(v.fragile), "rtol": rtol})
    features = sorted({s.tag for s in live})
    consts = {c for s in live for line in s.lines + s.init for c in re.findall(r"\bC\d+\b", line)}
    what = {"function": "a plain JAX function", "nnx": "an NNX module", "linen": "a Linen module"}[gen.kind]
    src = [f'"""nnxc fuzz program {name}: {what} (tests/fuzzgen.py, seed {seed})."""', HEADER]
    prog = {"seed": seed, "kind": gen.kind, "specs": specs, "sizes": sizes, "outputs": out_meta,
            "onnx_pipeline": gen.onnx_pipeline}
    src.append("PROGRAM = {\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in prog.items()) + "}\n")
    for c in sorted(consts, key=lambda c: int(c[1:])):
        src.append(f"{c} = {gen.consts[c]}")
    if consts:
        src.append("")
    src.append("\ndef make_inputs(B):")
    if any("T" in v.shape for v in used_inputs):
        src.append("    T = B + 1")
    arrs = []
    for v in used_inputs:
        sh = shape_src(v.shape)
        extra = ", special=True" if gen.special and v.isfloat else ""
        arrs.append(f"_c({seed * 100 + int(v.name[1:])}, {sh}, {NP[v.dtype]!r}{extra})")
    src.append(f"    return [{', '.join(arrs)}]\n")
    args = ", ".join(v.name for v in used_inputs)
    body = []
    if "B" in needed and first_b is not None:
        body.append(f"B = {first_b.name}.shape[0]")
    if "T" in needed and first_t is not None:
        body.append(f"T = {first_t.name}.shape[1]")
    for s in live:
        body += s.lines
    ret = "(" + ", ".join(v.name for v in outputs) + ("," if len(outputs) == 1 else "") + ")"
    if gen.out_style == "dict":
        ret = "{" + ", ".join(f"'out{i}': {v.name}" for i, v in enumerate(outputs)) + "}"
    elif gen.out_style == "single" and len(outputs) == 1:
        ret = outputs[0].name
    body.append(f"return {ret}")
    live_text = "\n".join(ln for s in live for ln in s.lines)
    init = [line for s in stmts for line in s.init  # a layer's definition, wherever it is called
            if s in live or any(re.search(rf"\bself\.{a}\b", live_text)
                                for a in re.findall(r"^self\.(\w+) = ", s.init[0] if s.init else ""))]
    if gen.kind == "function":
        src.append(f"\ndef f({args}):")
        src += ["    " + line for line in body]
        src.append("\n\ndef build():\n    return f, {}")
    elif gen.kind == "nnx":
        if any("Counter(" in line for line in init):
            src.append("\nclass Counter(nnx.Variable):\n    pass\n")
        src.append("\nclass Net(nnx.Module):")
        src.append("    def __init__(self, rngs):")
        src += ["        " + line for line in init] or ["        pass"]
        src.append(f"\n    def __call__(self, {args}):")
        src += ["        " + line for line in body]
        src.append(f"\n\ndef build():\n    return Net(nnx.Rngs({seed}, dropout={seed + 1})), {{}}")
    else:
        src.append("\nclass Net(nn.Module):")
        src.append("    @nn.compact")
        src.append(f"    def __call__(self, {args}):")
        src += ["        " + line for line in body]
        src.append("\n\ndef build():")
        src.append("    module = Net()")
        src.append(f"    variables = module.init(jax.random.key({seed}), *map(jnp.asarray, make_inputs(1)))")
        src.append("    variables = jax.tree_util.tree_map(lambda p: p * 1.25 + 0.125, variables)")
        src.append('    return module, {"variables": variables}')
    return "\n".join(src) + "\n", specs, sizes, out_meta, features


def generate(seed: int) -> Program:
    """A random valid program for ``seed`` (deterministic)."""
    gen = Gen(seed)
    gen.generate()
    gen.out_style = gen.r.choices(["tuple", "single", "dict"], [60, 25, 15])[0]
    name = f"fuzz_{seed}"
    source, specs, sizes, outs, features = render(gen, gen.stmts, gen.outputs, seed, name)
    return Program(seed, name, gen.kind, source, specs, sizes, outs, features, gen, list(gen.stmts),
                   list(gen.outputs))


def with_program(program: Program, stmts: list, outputs: list) -> Program:
    """The program made of other statements / outputs (for reduction)."""
    g = program.gen
    source, specs, sizes, outs, features = render(g, stmts, outputs, program.seed, program.name,
                                                  all_inputs=False)
    return Program(program.seed, program.name, program.kind, source, specs, sizes, outs, features, g,
                   list(stmts), list(outputs))


@dataclass
class Outcome:
    stage: str
    kind: str            # ok / refused / mismatch / crash / ort_refused / invalid / xla_only / skipped
    error: str = ""      # exception type (crashes, refusals)
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in ("mismatch", "crash", "ort_refused", "invalid")


def check(program: Program, stages=DEFAULT_STAGES, on_stage=None) -> list:
    """Run the checks on a program: one Outcome per stage (or one ``trace`` outcome)."""
    ns = program.ns
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for stage, kind, exc in run_checks(ns, stages, on_stage=on_stage):
            msg = "" if exc is None else f"{exc}"
            out.append(Outcome(stage, kind, "" if exc is None else error_name(exc), msg[:4000]))
    return out


def signature(outcomes: list) -> set:
    """What failed, for comparing a reduced program with the original: {(stage, kind, error)}."""
    return {(o.stage, o.kind, o.error if o.kind in ("crash", "refused") else "")
            for o in outcomes if o.failed}


def reproducer(program: Program, outcomes: list, kind: str | None = None) -> str:
    """A standalone script re-running the failing stages (of ``kind``, default all) of a program."""
    failing = [o for o in outcomes if o.failed and (kind is None or o.kind == kind)]
    stages = [o.stage for o in failing]
    lines = [f"# {o.stage}: {o.kind} {o.error}: {line}" for o in failing
             for line in (o.message.splitlines()[:1] or [""])]
    src = program.source
    harness = _harness_source()
    if "trace" in stages:
        main_stages = "()"
    else:
        main_stages = repr(tuple(stages))
    main = f'''

if __name__ == "__main__":
    # Found by tests/fuzzgen.py (seed {program.seed}). Expected failures:
{chr(10).join("    " + ln for ln in lines)}
    import sys
    results = run_checks(globals(), {main_stages})
    bad = [r for r in results if r[1] != "ok"]
    for stage, kind, exc in results:
        print(f"{{stage:10}} {{kind:12}} {{type(exc).__name__ + ': ' + str(exc).splitlines()[0] if exc else ''}}")
    if bad:
        stage = bad[0][0]
        run_checks(globals(), (stage,) if stage != "trace" else (), raise_first=True)  # traceback
    sys.exit(1 if bad else 0)
'''
    return src + "\n\n# ---- checks (tests/fuzzgen.py harness) ----\n" + harness + main


def _harness_source() -> str:
    with open(__file__) as fh:
        text = fh.read()
    start = text.index("# ==== HARNESS BEGIN")
    end = text.index("# ==== HARNESS END ====")
    return text[start:end]


def reduce(program: Program, still_fails, max_checks: int = 200) -> Program:
    """Shrink a failing program: fewer outputs, then statements bypassed one at a time (a
    statement's result replaced by an earlier value of the same shape and dtype), as long as
    ``still_fails(candidate)`` holds."""
    best = program
    checks = 0

    def attempt(cand):
        nonlocal checks
        checks += 1
        try:
            return still_fails(cand)
        except Exception:  # noqa: BLE001
            return False

    if len(best.out_vals) > 1:
        for v in best.out_vals:
            cand = with_program(best, best.stmts, [v])
            if attempt(cand):
                best = cand
                break
    changed = True
    while changed and checks < max_checks:
        changed = False
        stmts = best.stmts
        live_names = set(_NAME.findall(best.source))
        for i in range(len(stmts) - 1, -1, -1):
            s = stmts[i]
            if checks >= max_checks:
                break
            if not any(v.name in live_names for v in s.outs) or len(s.outs) != 1:
                continue
            v = s.outs[0]
            earlier = [u for st in stmts[:i] for u in st.outs] + list(best.gen.inputs)
            subs = [u for u in earlier if u.shape == v.shape and u.dtype == v.dtype
                    and re.search(rf"\b{u.name}\b", "\n".join(s.lines))]
            subs += [u for u in earlier if u.shape == v.shape and u.dtype == v.dtype and u not in subs][-2:]
            for u in subs[:3]:
                new_stmts = []
                for st in stmts[:i] + stmts[i + 1:]:
                    lines = [re.sub(rf"\b{v.name}\b", u.name, ln) for ln in st.lines]
                    new_stmts.append(Stmt(lines, st.outs, st.tag, st.init))
                outs = [u if o is v else o for o in best.out_vals]
                cand = with_program(best, new_stmts, outs)
                if attempt(cand):
                    best = cand
                    changed = True
                    break
            if changed:
                break
    return best
