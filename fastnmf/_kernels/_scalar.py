"""Scalar helpers and short dot products shared by the kernels (inlined into them)."""
import math

import numpy as np

from .._jit import inline_helper


@inline_helper
def guarded(wh, eps):
    """wh bounded below by eps (a NaN stays NaN), as a select LLVM can vectorize."""
    return eps if wh < eps else wh


@inline_helper
def beta_divergence_entry(x, y, beta):
    """d_beta(x | y) for one entry, in float64. ``y`` is already guarded (> 0).

    beta == 0: Itakura-Saito, beta == 1: generalized KL, otherwise the beta-divergence
    (x^b + (b-1) y^b - b x y^(b-1)) / (b (b-1)). For x == 0 this is y^b / b for beta > 0, inf
    for beta < 0.
    """
    x = np.float64(x)      # float() keeps a float32 a float32 in Numba
    y = np.float64(y)
    beta = np.float64(beta)
    if beta == 1.0:
        if x == 0.0:
            return y
        return x * math.log(x / y) - x + y
    if beta == 0.0:
        q = x / y
        return q - math.log(q) - 1.0
    if x == 0.0:            # 0^beta: 0 for beta > 0, inf below (validation keeps those out)
        return y**beta / beta if beta > 0.0 else math.inf
    return (x**beta + (beta - 1.0) * y**beta - beta * x * y ** (beta - 1.0)) / (beta * (beta - 1.0))


@inline_helper
def row_dot(F, i, G, j, zero):
    """F_i . G_j (the model's entry wh_ij), accumulated from ``zero`` in the factors' dtype."""
    wh = zero
    for k in range(F.shape[1]):
        wh += F[i, k] * G[j, k]
    return wh


@inline_helper
def four_dots(F, i, G, j0, j1, j2, j3, zero):
    """(F_i . G_j0, ..., F_i . G_j3): four independent chains the CPU overlaps, F_i read once."""
    a0 = zero
    a1 = zero
    a2 = zero
    a3 = zero
    for k in range(F.shape[1]):
        f = F[i, k]
        a0 += f * G[j0, k]
        a1 += f * G[j1, k]
        a2 += f * G[j2, k]
        a3 += f * G[j3, k]
    return a0, a1, a2, a3


@inline_helper
def eight_dots(F, i, G, j, zero):
    """(F_i . G_j, ..., F_i . G_j+7): as ``four_dots`` for eight consecutive rows of G, in
    one loop (two ``four_dots`` would load F_i twice and overlap half as many sums; the HALS
    sweep measured the eight-row loop 1.0-1.33x faster than two quads)."""
    a0 = zero
    a1 = zero
    a2 = zero
    a3 = zero
    a4 = zero
    a5 = zero
    a6 = zero
    a7 = zero
    for k in range(F.shape[1]):
        f = F[i, k]
        a0 += f * G[j, k]
        a1 += f * G[j + 1, k]
        a2 += f * G[j + 2, k]
        a3 += f * G[j + 3, k]
        a4 += f * G[j + 4, k]
        a5 += f * G[j + 5, k]
        a6 += f * G[j + 6, k]
        a7 += f * G[j + 7, k]
    return a0, a1, a2, a3, a4, a5, a6, a7
