"""Scalar helpers shared by the kernels (inlined into them)."""
import math

from .._jit import inline_helper


@inline_helper
def beta_divergence_entry(x, y, beta):
    """d_beta(x | y) for one entry, in float64. ``y`` is already guarded (> 0).

    beta == 0: Itakura-Saito, beta == 1: generalized KL, otherwise the beta-divergence
    (x^b + (b-1) y^b - b x y^(b-1)) / (b (b-1)). For x == 0 and beta > 0 this is y^b / b.
    """
    x = float(x)
    y = float(y)
    if beta == 1.0:
        if x == 0.0:
            return y
        return x * math.log(x / y) - x + y
    if beta == 0.0:
        q = x / y
        return q - math.log(q) - 1.0
    if x == 0.0:
        return y**beta / beta
    return (x**beta + (beta - 1.0) * y**beta - beta * x * y ** (beta - 1.0)) / (beta * (beta - 1.0))
