"""Optimization passes: small functions ``Graph -> Graph``, registered by name in ``PASSES``.

A pass never modifies its argument; it returns it unchanged when there is nothing to do and
a new graph otherwise. Presets are lists of names. ``nnxc.optimize`` runs them.
"""
from __future__ import annotations

from .cleanup import cleanup, cleanup_all
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code, eliminate_dead_variables
from .filters import parse_filter
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_all_constants, fold_constants
from .fuse_activations import fuse_activations
from .fuse_attention import fuse_attention
from .fuse_linear import fuse_linear
from .fuse_norms import fuse_norms
from .fuse_softmax import fuse_softmax
from .freeze import freeze
from .prune import prune
from .simplify import simplify
from .strip_jit_boundaries import strip_jit_boundaries
from .strip_stop_gradient import strip_stop_gradient

PASSES: dict[str, tuple] = {
    "freeze": (freeze, "variables become constants (all, or those optimize(freeze=filter) selects)"),
    "prune": (prune, "drop variable updates (all, or those optimize(prune=filter) selects)"),
    "dce": (eliminate_dead_code, "remove unused nodes, region arguments and results"),
    "dce-variables": (eliminate_dead_variables, "dce, and remove variables nothing reads or writes"),
    "cse": (eliminate_common_subexpressions, "reuse the results of repeated identical nodes"),
    "fold-constants": (fold_constants, "evaluate exact nodes (data movement, integer math) on constant inputs"),
    "fold-all-constants": (fold_all_constants, "evaluate every node on constant inputs, float math too (size-bounded)"),
    "simplify": (simplify, "algebraic identities; merge reshape/transpose/broadcast chains"),
    "strip-stop-gradient": (strip_stop_gradient, "remove stop_gradient (inference only)"),
    "strip-jit-boundaries": (strip_jit_boundaries, "constants crossing a nested jit become plain constants"),
    "cleanup": (cleanup, "simplify, fold-constants, cse, dce until nothing changes"),
    "cleanup-all": (cleanup_all, "simplify, fold-all-constants, cse, dce until nothing changes"),
    "fold-batchnorm": (fold_batchnorm, "fold per-channel affine ops (frozen BatchNorm) into conv/linear weights"),
    "fuse-softmax": (fuse_softmax, "exp / sum(exp) over one axis -> nnxc.softmax"),
    "fuse-attention": (fuse_attention, "dot / scale / mask / softmax / dot -> nnxc.attention"),
    "fuse-norms": (fuse_norms, "mean / variance / rsqrt graphs -> nnxc.layer_norm, nnxc.rms_norm"),
    "fuse-activations": (fuse_activations, "gelu (tanh, erf) and silu graphs -> nnxc.gelu, nnxc.silu"),
    "fuse-linear": (fuse_linear, "dot_general + bias -> nnxc.linear"),
}

# Passes whose output computes, on XLA, exactly the bits of their input (verified on every
# example, test model and generated program). The others may change rounding: fusions
# replace the model's own spelling of a formula, folding float math rounds eagerly, freezing
# lets XLA fold weights into the computation.
EXACT = frozenset({"dce", "dce-variables", "cse", "fold-constants", "simplify", "cleanup"})

CLEANUP = ["simplify", "fold-constants", "cse", "dce"]
CLEANUP_ALL = ["simplify", "fold-all-constants", "cse", "dce"]
FUSION = ["fuse-softmax", "fuse-attention", "fuse-norms", "fuse-activations", "fuse-linear"]
PRESETS: dict[str, list[str]] = {
    "none": [],
    "default": CLEANUP + ["cleanup"],
    "fast": ["strip-jit-boundaries"] + CLEANUP_ALL + FUSION + ["cleanup-all"],
    "inference": ["freeze", "prune", "dce-variables", "strip-stop-gradient", "strip-jit-boundaries"]
    + CLEANUP_ALL
    + ["fold-batchnorm", "dce"] + FUSION + ["cleanup-all"],
}
# What each preset promises on XLA against the model's own jax.jit (README says the same).
PROMISES: dict[str, str] = {
    "none": "bit-exact (the traced graph as it is)",
    "default": "bit-exact: only exact cleanups (dead code, common subexpressions, data-movement "
               "and integer folding, identities)",
    "fast": "within tolerance (f32: 1e-5 of the output's scale): fused ops and folded float math "
            "round differently",
    "inference": "within tolerance (f32: 1e-5 of the output's scale): frozen weights, folded "
                 "BatchNorm, fused ops and folded float math round differently; updates pruned",
}


def inexact_passes(names) -> list[str]:
    """The passes of a pipeline that may change XLA results (by name)."""
    return [n for n in names if isinstance(n, str) and n not in EXACT]

from .manager import optimize  # noqa: E402 - needs PASSES
from .report import PassError, Stats  # noqa: E402

__all__ = ["PASSES", "PRESETS", "PROMISES", "EXACT", "inexact_passes", "optimize", "PassError", "Stats", "parse_filter", "freeze", "prune"]
