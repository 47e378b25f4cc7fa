"""fuse-attention: scaled dot-product attention becomes ``nnxc.attention``.

    before:  %0 = dot_general(%q, %k) {dimension_numbers=(((3,),(3,)),((0,2),(0,2)))}
             %1 = mul(%0, 0.25:f32)   %2 = select_n(%mask, %neg, %1)
             %3 = nnxc.softmax(%2) {axis=3}
             %4 = dot_general(%v, %3) {dimension_numbers=(((1,),(3,)),((0,2),(0,1)))}
             %5 = transpose(%4) {permutation=(0,3,1,2)}
    after:   %5 = nnxc.attention(%q, %k, %v, %mask) {scale=0.25}

Runs after fuse-softmax. Matched by following each dim's role (batch, query, key, heads,
head dim) through the two dots, the transposes and the grouped-query reshapes, so it finds
jax.nn.dot_product_attention's XLA form (what flax.nnx.MultiHeadAttention produces),
hand-written einsum attention, and the Hugging Face Flax / flax.linen
``dot_product_attention_weights`` form: q (or k) scaled by a constant before the dot, an
additive bias, keys and values repeated per query group with ``jnp.repeat`` (GQA).
q, k, v must be [B,T,N,H], [B,S,K,H], [B,S,K,H]. A mask must select a large finite negative
number (as jax and flax do); an additive ``select(mask, 0, big)`` with big <= -1e30 (finfo.min)
becomes that boolean mask, any other float bias is passed as the op's additive bias; -inf is
not fused (a fully masked row is NaN there, not the uniform average the fused op gives).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.graph import Graph, Value
from .idioms import inserts_ones, producer
from .pattern import Custom, Match, Rule, fuse
from .rewrite import const, const_data, splat

Q, K, V = ("b", "t", "n", "h"), ("b", "s", "n", "h"), ("b", "s", "n", "hv")
MASK = ("b", "n", "t", "s")
ABSORBS = -1e30  # added to a logit below 1e13 (f64) or 1e22 (f32), it gives itself back


def _dot_labels(d, lhs, rhs, contract: str):
    """Labels of a dot_general's result from its operands' labels, or None if it is not the
    expected contraction (``contract`` only) batched over b and n."""
    (lc, rc), (lb, rb) = d.attrs["dimension_numbers"]
    if [lhs[i] for i in lc] != [contract] or [rhs[j] for j in rc] != [contract]:
        return None
    batch = [lhs[i] for i in lb]
    if batch != [rhs[j] for j in rb] or sorted(batch) != ["b", "n"]:
        return None
    lfree = [lhs[i] for i in range(len(lhs)) if i not in lc and i not in lb]
    rfree = [rhs[j] for j in range(len(rhs)) if j not in rc and j not in rb]
    return batch + lfree + rfree


def _scaled(v: Value) -> tuple[Value, float | None]:
    """``(x, f)`` when ``v`` is ``x * c`` or ``x / c`` for a nonzero constant (f = c or 1/c)."""
    sc = producer(v, "mul", "div")
    if sc is None:
        return v, None
    a, c = sc.inputs
    if sc.op == "mul" and splat(a) is not None:
        a, c = c, a
    f = splat(c)
    if f is None or f == 0 or not math.isfinite(f) or splat(a) is not None:
        return v, None
    return a, (f if sc.op == "mul" else 1.0 / f)


def _unrepeated(v: Value) -> tuple[Value, int]:
    """``(x, r)`` when ``v`` is ``jnp.repeat(x, r, axis=2)`` of a [B,S,K,H] ``x``, as traced:
    broadcast to [B,S,K,r,H], then the two head dims merged."""
    rs = producer(v, "reshape")
    bc = producer(rs.inputs[0], "broadcast_in_dim") if rs is not None else None
    if bc is None or rs.attrs.get("dimensions") is not None or bc.inputs[0].type.rank != 4:
        return v, 1
    x, wide = bc.inputs[0].type.shape, bc.outputs[0].type.shape
    r = wide[3]
    if tuple(bc.attrs["broadcast_dimensions"]) != (0, 1, 2, 4) or not isinstance(r, int) \
            or not isinstance(x[2], int) or tuple(wide) != (*x[:3], r, x[3]) \
            or tuple(v.type.shape) != (*x[:2], x[2] * r, x[3]):
        return v, 1
    return bc.inputs[0], r


def _from_dot(v: Value) -> bool:
    """Whether ``v`` is a dot_general's result, maybe transposed, scaled or masked."""
    for _ in range(6):
        p = v.producer
        if p is None:
            return False
        if p.op == "dot_general":
            return True
        if p.op not in ("transpose", "mul", "div", "select_n"):
            return False
        v = p.inputs[-1] if p.op == "select_n" else next(
            (x for x in p.inputs if splat(x) is None), p.inputs[0])
    return False


def _bias(add, dtype: str) -> tuple[Value, str, Value] | str:
    """``(logits, kind, value)`` for ``logits + bias``: kind "mask" (the boolean mask) or
    "const" (a constant to make boolean) when the bias is 0 where attended and a big finite
    negative number elsewhere, "bias" for any other float bias; or why not."""
    a, c = add.inputs
    if _from_dot(a) == _from_dot(c):
        return "cannot tell the logits from the bias in the add before the softmax"
    logits, bias = (a, c) if _from_dot(a) else (c, a)
    if bias.type.dtype != dtype or bias.type.rank != logits.type.rank:
        return f"the bias {bias.type} is not a {dtype} of the logits' rank"
    sel = producer(bias, "select_n")
    if sel is not None and len(sel.inputs) == 3 and sel.inputs[0].type.dtype == "bool" \
            and splat(sel.inputs[2]) == 0.0 and splat(sel.inputs[1]) is not None:
        big = splat(sel.inputs[1])
        if big == -math.inf:
            return "the bias is -inf where masked: a fully masked row is NaN there, " \
                   "not the uniform average the fused op gives"
        if big <= ABSORBS:
            return logits, "mask", sel.inputs[0]
    data = const_data(bias)
    if data is not None:
        if np.isneginf(data).any():
            return "the bias is -inf where masked: a fully masked row is NaN there, " \
                   "not the uniform average the fused op gives"
        if ((data == 0) | (data <= ABSORBS)).all() and (data != 0).any():
            return logits, "const", bias  # made a boolean constant in the rewrite
    return logits, "bias", bias


def _match(root: Value, m: Match) -> str | None:
    post, v = [], root
    while len(post) < 3 and producer(v, "transpose", "reshape"):
        post.append(v.producer)
        v = v.producer.inputs[0]
    d2 = producer(v, "dot_general")
    if d2 is None:
        return "the result does not come from a dot_general with the probabilities"
    p_rhs = producer(d2.inputs[1], "nnxc.softmax") is not None
    vv, probs = (d2.inputs[0], d2.inputs[1]) if p_rhs else (d2.inputs[1], d2.inputs[0])
    sm = producer(probs, "nnxc.softmax")
    if sm is None:
        return "no operand of the last dot_general is a softmax (run fuse-softmax first)"
    # softmax input down to the first dot: transposes, one scale, one select mask, one bias
    chain, s, perms, masks, scale, scaled = [sm], sm.inputs[0], [], [], 1.0, False
    for _ in range(8):
        node = s.producer
        if node is None or node.op == "dot_general":
            break
        if node.op == "transpose":
            perms.append(tuple(node.attrs["permutation"]))
            s = node.inputs[0]
        elif node.op == "select_n" and len(node.inputs) == 3 and not masks:
            pred, neg, s = node.inputs
            big = splat(neg)
            if big is None or not -math.inf < big <= -1e9:
                return f"masked with {big} instead of a large finite negative number"
            masks.append(("mask", pred, len(perms)))
        elif node.op == "add" and not masks:
            got = _bias(node, s.type.dtype)
            if isinstance(got, str):
                return got
            s, kind, value = got
            masks.append((kind, value, len(perms)))
        elif node.op in ("select_n", "add") and masks:
            return "masked by more than one select or added bias (the fused op takes one)"
        elif node.op in ("mul", "div") and not scaled:
            s, f = _scaled(s)
            if f is None:
                return "the logits are scaled by a non-constant"
            scale, scaled = scale * f, True
        else:
            break
        chain.append(node)
    d1 = producer(s, "dot_general")
    if d1 is None:
        return "the softmax input does not come from a dot_general of queries and keys"
    q, k = d1.inputs
    for where in ("q", "k"):  # a constant scale of the queries or keys before the dot
        x, f = _scaled(q if where == "q" else k)
        if f is not None:
            q, k, scale = (x, k, scale * f) if where == "q" else (q, x, scale * f)
    qlab = list(Q)
    rq = producer(q, "reshape") if q.type.rank == 5 else None
    if rq is not None:  # grouped query attention: q [B,T,N,H] -> [B,T,K,G,H]
        q, qlab = rq.inputs[0], ["b", "t", "n", "g", "h"]
        want = tuple(q.type.shape[:2]) + tuple(rq.outputs[0].type.shape[2:4]) + tuple(q.type.shape[3:])
        if q.type.rank != 4 or tuple(rq.outputs[0].type.shape) != want:
            return "the queries are reshaped other than by splitting the heads into groups"
        chain.append(rq)
        q, f = _scaled(q)
        scale *= f if f is not None else 1.0
    if any(t.type.rank != 4 for t in (q, k, vv)):
        return "q, k and v are not all rank 4 ([batch, length, heads, head dim])"
    heads = rq.outputs[0].type.shape[2] if rq is not None else q.type.shape[2]
    if heads != k.type.shape[2] or k.type.shape[:3] != vv.type.shape[:3]:
        return "the heads of q, k and v do not line up"
    if len({q.type.dtype, k.type.dtype, vv.type.dtype, root.type.dtype}) != 1 \
            or q.type.dtype not in ("f32", "f64"):
        return "q, k, v are not all f32 (or all f64)"
    labels = _dot_labels(d1, qlab, K, "h")
    if labels is None:
        return "the first dot_general does not contract q and k over the head dim per batch and head"
    at = [list(labels)]  # at[i]: the labels below the i-th transpose from the top
    for perm in reversed(perms):
        labels = [labels[i] for i in perm]
        at.insert(0, labels)
    if labels[sm.attrs["axis"]] != "s":
        return "the softmax is not over the keys"
    out = _dot_labels(d2, labels if not p_rhs else V, V if not p_rhs else labels, "s")
    if out is None:
        return "the last dot_general does not contract the probabilities with v over the keys"
    for node in reversed(post):
        if node.op == "transpose":
            out = [out[i] for i in node.attrs["permutation"]]
        elif out[2:4] == ["n", "g"] and node.outputs[0].type.shape == root.type.shape and node is post[0]:
            out = out[:3] + out[4:]
        else:
            return "the result is reshaped other than by merging the head groups"
    if out != ["b", "t", "n", "hv"] or ("g" in qlab) != (rq is not None):
        return f"the result's dims are {out}, not [batch, query, heads, head dim]"
    want = tuple(q.type.shape[:3]) + (vv.type.shape[3],)
    if tuple(root.type.shape) != want:  # e.g. unbatched [T,N,H] inputs, reshaped to [1,T,N,H]
        return f"the result {root.type} does not have the shape [batch, query, heads, head dim] {want}"
    for kind, value, i in masks:
        why = _mask(value, at[i], m, grouped=rq is not None and rq.outputs[0].type.shape[3] != 1,
                    boolean=kind == "mask")
        if why:
            return why
        m.attrs["to_bool"] = kind == "const"
    kr, r = _unrepeated(k)
    vr, rv = _unrepeated(vv)
    if r == rv > 1 and kr.type.shape[:3] == vr.type.shape[:3]:  # jnp.repeat'ed keys and values
        k, vv = kr, vr
    m.values.update(q=q, k=k, v=vv)
    m.consts["scale"] = scale
    m.nodes.extend(post + [d2] + chain + [d1])
    return None


def _mask(pred: Value, labels: list, m: Match, grouped: bool, boolean: bool = True) -> str | None:
    """Follow the mask (or float bias) back through layout ops to the user's; plan its
    [B,N,T,S] form."""
    cur, lab = pred, list(labels)
    for _ in range(8):
        lab = ["1" if d == 1 else x for x, d in zip(lab, cur.type.shape)]
        node = cur.producer
        if node is None:
            break
        if boolean and node.op == "and" and splat(node.inputs[0]) == 1.0:
            cur = node.inputs[1]
        elif boolean and node.op == "and" and splat(node.inputs[1]) == 1.0:
            cur = node.inputs[0]
        elif node.op == "transpose":
            inner = [None] * len(lab)
            for i, p in enumerate(node.attrs["permutation"]):
                inner[p] = lab[i]
            cur, lab = node.inputs[0], inner
        elif node.op == "broadcast_in_dim":
            cur, lab = node.inputs[0], [lab[d] for d in node.attrs["broadcast_dimensions"]]
        elif node.op == "reshape" and inserts_ones(node):
            real = iter([x for x in lab if x != "1"])
            cur = node.inputs[0]
            lab = ["1" if d == 1 else next(real) for d in cur.type.shape]
        elif boolean and node.op == "convert_element_type" and node.inputs[0].type.dtype == "bool":
            cur = node.inputs[0]
        elif boolean and node.op == "gt" and splat(node.inputs[1]) == 0.0 \
                and producer(node.inputs[0], "convert_element_type") \
                and node.inputs[0].producer.inputs[0].type.dtype == "bool":
            cur = node.inputs[0].producer.inputs[0]  # (mask.astype(f32) > 0), as flax's combine_masks
        else:
            break
    lab = ["1" if d == 1 else x for x, d in zip(lab, cur.type.shape)]
    real = [x for x in lab if x != "1"]
    what = "mask" if boolean else "bias"
    if not set(real) <= set(MASK) or len(set(real)) != len(real) or (grouped and "n" in real):
        return f"the {what} varies along {real}, not only batch, heads, queries and keys"
    dims = [i for i, x in enumerate(lab) if x != "1"]
    ordered = sorted(dims, key=lambda i: MASK.index(lab[i]))
    perm = range(len(lab)) if ordered == dims else ordered + [i for i, x in enumerate(lab) if x == "1"]
    shape = tuple(next((cur.type.shape[i] for i, x in enumerate(lab) if x == r), 1) for r in MASK)
    m.values["mask"] = cur
    m.attrs["mask_perm"], m.attrs["mask_shape"] = tuple(perm), shape
    return None


def _rewrite(b, m):
    ins = [m["q"], m["k"], m["v"]]
    mask = m.values.get("mask")
    if mask is not None:
        perm, shape = m.attrs["mask_perm"], m.attrs["mask_shape"]
        if m.attrs["to_bool"]:  # a constant 0 / big negative bias
            named, mask = mask.name, const(const_data(mask) == 0)
            mask.name = f"{named}.mask" if named else None
        if perm != tuple(range(len(perm))):
            mask = b.transpose(mask, permutation=perm)
        if tuple(mask.type.shape) != shape:
            from .rewrite import reshaped
            mask = reshaped(b, mask, shape)
        ins.append(mask)
    return b.fused("nnxc.attention", *ins, scale=float(m.consts["scale"]))


ATTENTION = Rule("attention", Custom(frozenset({"transpose", "reshape", "dot_general"}), _match),
                 _rewrite)
RULES = [ATTENTION]


def fuse_attention(graph: Graph) -> Graph:
    return fuse(graph, RULES)
