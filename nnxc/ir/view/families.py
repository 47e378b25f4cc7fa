"""Op families: the colour of an op in the DOT and HTML views."""
from __future__ import annotations

_FAMILIES = {
    "matmul": "dot_general conv_general_dilated nnxc.linear nnxc.attention nnxc.matmul nnxc.conv",
    "norm": "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin cumsum "
            "cumprod cummax cummin cumlogsumexp reduce_precision nnxc.layer_norm nnxc.rms_norm "
            "nnxc.batch_norm nnxc.softmax",
    "act": "exp exp2 log log1p expm1 tanh logistic erf erfc erf_inv sqrt rsqrt cbrt pow integer_pow "
           "sin cos tan atan2 nnxc.gelu nnxc.silu nnxc.relu",
    "elem": "add sub mul div rem max min neg abs sign square floor ceil round select_n clamp eq ne lt "
            "le gt ge and or not xor nextafter is_finite add_any",
    "shape": "reshape transpose broadcast_in_dim squeeze expand_dims concatenate slice pad rev copy "
             "copy_p convert_element_type iota stop_gradient bitcast_convert_type split",
    "index": "gather scatter scatter-add scatter_add scatter-mul scatter-min scatter-max dynamic_slice "
             "dynamic_update_slice sort top_k argsort",
    "control": "scan while cond pjit closed_call custom_jvp_call custom_vjp_call remat",
    "random": "random_bits random_seed random_wrap random_unwrap random_fold_in random_split "
              "threefry2x32 shift_right_logical shift_left",
}
FAMILY = {op: fam for fam, ops in _FAMILIES.items() for op in ops.split()}

# (fill, accent) per family: a pale fill for the node and a saturated stripe / text colour
COLORS = {
    "matmul": ("#e8f0ff", "#2f6fdf"),
    "norm": ("#f1eaff", "#7c4fd0"),
    "act": ("#fff1e3", "#d9741c"),
    "elem": ("#e6f6ef", "#23935f"),
    "shape": ("#eef1f5", "#7b8794"),
    "index": ("#fde9f3", "#c23d87"),
    "control": ("#e3f5f7", "#11829a"),
    "random": ("#fdeaea", "#cc3d3d"),
    "fused": ("#fff6d9", "#b98900"),
    "other": ("#f2f2f2", "#6b6b6b"),
    "io": ("#2b3440", "#2b3440"),
}


def op_family(op: str) -> str:
    """``dot_general`` -> ``matmul``; unknown ``nnxc.*`` ops are ``fused``, others ``other``."""
    fam = FAMILY.get(op)
    if fam is None:
        return "fused" if op.startswith("nnxc.") else "other"
    return fam
