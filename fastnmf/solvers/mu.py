"""Multiplicative updates for the beta-divergence.

Lee & Seung (2001) for beta = 2 and beta = 1; Fevotte & Idier (2011) for any beta, with the
exponent gamma(beta) that makes every step non-increasing:
    F <- F * ( num / (den + l1 + l2 F) ) ** gamma
    num = (A o (F G^T)^(beta-2)) G,   den = (F G^T)^(beta-1) G
with A = X (side W, F = W, G = H^T) or A = X^T (side H, F = H^T, G = W).
For beta = 2: num = A G and den = F (G^T G); for beta = 1: den = 1^T G (column sums), kept
as one 1 x r row shared by every row of F.
"""
import numpy as np

from .._kernels.factor import gram, mu_apply, mu_apply_gram, mu_apply_shared
from .._memory import aligned_empty, aligned_like
from .._validation import mu_exponent
from ._base import Solver


class MU(Solver):
    name = "mu"

    def __init__(self, op, W, Ht, beta, penalty, update_W=True, update_H=True):
        super().__init__(op, W, Ht, beta, penalty, update_W, update_H)
        T = self.dtype.type
        self.gamma = T(mu_exponent(beta))
        self.tiny = T(np.sqrt(np.finfo(self.dtype).tiny))
        r = W.shape[1]
        self._num = {"W": aligned_like(W), "H": aligned_like(Ht)}
        if beta == 2:
            self._den = {}
        elif beta == 1:
            self._den = {side: aligned_empty((1, r), self.dtype) for side in ("W", "H")}
        else:
            self._den = {"W": aligned_like(W), "H": aligned_like(Ht)}
        self._gram = np.empty((r, r), dtype=self.dtype)
        self._h_terms_ready = False

    def _update(self, side):
        F, G = self.factors(side)
        num = self._num[side]
        T = self.dtype.type
        l1, l2 = T(self.penalty.l1[side]), T(self.penalty.l2[side])
        if self.beta == 2:
            gram(G, self._gram)
        # With H updated next, the operator may do the W step and make the H step's terms
        # (X^T W, or the beta terms) in one pass over X (tall dense X; False elsewhere).
        if side == "W" and "H" in self.sides and self.op.mu_w_step_one_pass(
                F, G, self.beta, self._gram, l1, l2, self.gamma, self.tiny, self._num["H"],
                self._den.get("H")):
            self._h_terms_ready = True
            return
        ready, self._h_terms_ready = self._h_terms_ready, False
        if self.beta == 2:
            if not ready:
                self.op.product(side, G, num)
            mu_apply_gram(F, num, self._gram, l1, l2, self.gamma, self.tiny, self.by_rank)
            self._remember_cross(F, num)
        else:
            den = self._den[side]
            if not ready:
                self.op.beta_terms(side, F, G, self.beta, num, den)
            step = mu_apply_shared if self.beta == 1 else mu_apply
            step(F, num, den, l1, l2, self.gamma, self.tiny)
