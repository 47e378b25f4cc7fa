"""fuse-attention: scaled dot-product attention becomes ``nnxc.attention``.

    before:  %0 = dot_general(%q, %k) {dimension_numbers=(((3,),(3,)),((0,2),(0,2)))}
             %1 = mul(%0, 0.25:f32)   %2 = select_n(%mask, %neg, %1)
             %3 = nnxc.softmax(%2) {axis=3}
             %4 = dot_general(%v, %3) {dimension_numbers=(((1,),(3,)),((0,2),(0,1)))}
             %5 = transpose(%4) {permutation=(0,3,1,2)}
    after:   %5 = nnxc.attention(%q, %k, %v, %mask) {scale=0.25}

Runs after fuse-softmax. Matched by following each dim's role (batch, query, key, heads,
head dim) through the two dots, the transposes and the grouped-query reshapes, so it finds
jax.nn.dot_product_attention's XLA form (what flax.nnx.MultiHeadAttention produces) and
hand-written einsum attention alike. q, k, v must be [B,T,N,H], [B,S,K,H], [B,S,K,H];
a mask must select a large finite negative number (as jax and flax do); a bias is not fused.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph, Value
from .idioms import inserts_ones, producer
from .pattern import Custom, Match, Rule, fuse
from .rewrite import splat

Q, K, V = ("b", "t", "n", "h"), ("b", "s", "n", "h"), ("b", "s", "n", "hv")
MASK = ("b", "n", "t", "s")


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
    chain, s, pred = [sm], sm.inputs[0], None
    sel = producer(s, "select_n")
    if sel is not None:
        pred, neg, s = sel.inputs
        big = splat(neg)
        if big is None or not -math.inf < big <= -1e9:
            return f"masked with {big} instead of a large finite negative number"
        chain.append(sel)
    perms = []
    while producer(s, "transpose"):
        chain.append(s.producer)
        perms.append(tuple(s.producer.attrs["permutation"]))
        s = s.producer.inputs[0]
    scale = 1.0
    sc = producer(s, "mul", "div")
    if sc is not None:
        a, c = sc.inputs
        if sc.op == "mul" and splat(a) is not None:
            a, c = c, a
        f = splat(c)
        if f is None or f == 0:
            return "the logits are scaled by a non-constant"
        scale = f if sc.op == "mul" else 1.0 / f
        chain.append(sc)
        s = a
    d1 = producer(s, "dot_general")
    if d1 is None:
        return "the softmax input does not come from a dot_general of queries and keys"
    q, k = d1.inputs
    qlab = list(Q)
    rq = producer(q, "reshape")
    if rq is not None:  # grouped query attention: q [B,T,N,H] -> [B,T,K,G,H]
        q, qlab = rq.inputs[0], ["b", "t", "n", "g", "h"]
        want = tuple(q.type.shape[:2]) + tuple(rq.outputs[0].type.shape[2:4]) + tuple(q.type.shape[3:])
        if q.type.rank != 4 or tuple(rq.outputs[0].type.shape) != want:
            return "the queries are reshaped other than by splitting the heads into groups"
        chain.append(rq)
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
    for perm in reversed(perms):
        labels = [labels[i] for i in perm]
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
    if pred is not None:
        why = _mask(pred, labels, m, grouped=rq is not None and rq.outputs[0].type.shape[3] != 1)
        if why:
            return why
    m.values.update(q=q, k=k, v=vv)
    m.consts["scale"] = scale
    m.nodes.extend(post + [d2] + chain + [d1])
    return None


def _mask(pred: Value, labels: list, m: Match, grouped: bool) -> str | None:
    """Follow the mask back through layout ops to the user's mask; plan its [B,N,T,S] form."""
    cur, lab = pred, list(labels)
    for _ in range(8):
        lab = ["1" if d == 1 else x for x, d in zip(lab, cur.type.shape)]
        node = cur.producer
        if node is None:
            break
        if node.op == "and" and splat(node.inputs[0]) == 1.0:
            cur = node.inputs[1]
        elif node.op == "and" and splat(node.inputs[1]) == 1.0:
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
        elif node.op == "convert_element_type" and node.inputs[0].type.dtype == "bool":
            cur = node.inputs[0]
        else:
            break
    lab = ["1" if d == 1 else x for x, d in zip(lab, cur.type.shape)]
    real = [x for x in lab if x != "1"]
    if not set(real) <= set(MASK) or len(set(real)) != len(real) or (grouped and "n" in real):
        return f"the mask varies along {real}, not only batch, heads, queries and keys"
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
