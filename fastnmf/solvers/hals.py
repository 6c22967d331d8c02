"""HALS: exact coordinate descent on the columns of a factor for the Frobenius loss
(Cichocki & Phan 2009), parallel over rows, with accelerated inner repetitions
(Gillis & Glineur 2012).

For side W (F = W, G = H^T, A = X): P = A G costs O(nnz r) (O(mnr) dense) and Q = G^T G
O(n r^2); one sweep over F costs O(m r^2). Since P and Q are reused, a sweep is repeated
while it still pays: at most floor(1 + alpha * rho) sweeps, rho = cost(P, Q) / cost(sweep),
and a row stops when its sweep changes it by less than delta times its first sweep.
"""
import numpy as np

from .._kernels.factor import gram, hals_sweeps
from .._memory import aligned_like
from ._base import Solver

ALPHA = 0.5      # Gillis & Glineur's alpha: share of the product cost spent on repetitions
DELTA = 0.1      # stop repeating once a sweep moves a row by < DELTA x its first move
MAX_SWEEPS = 50


class HALS(Solver):
    name = "hals"

    def __init__(self, op, W, Ht, beta, penalty, update_W=True, update_H=True):
        super().__init__(op, W, Ht, beta, penalty, update_W, update_H)
        r = W.shape[1]
        self._P = {"W": aligned_like(W), "H": aligned_like(Ht)}
        self._Q = np.empty((r, r), dtype=self.dtype)
        m, n = op.shape
        nnz = op.nnz  # the same count for dense and CSR storage: same sweeps, same result
        self._sweeps = {}
        for side, rows, other in (("W", m, n), ("H", n, m)):
            rho = (nnz * r + other * r * r) / max(rows * r * r, 1)
            self._sweeps[side] = int(min(MAX_SWEEPS, max(1, np.floor(1 + ALPHA * rho))))

    def _update(self, side):
        F, G = self.factors(side)
        P = self._P[side]
        self.op.product(side, G, P)
        gram(G, self._Q)
        Q = self._Q
        l2 = self.penalty.l2[side]
        if l2:
            Q.flat[:: Q.shape[0] + 1] += l2
        T = self.dtype.type
        hals_sweeps(F, P, Q, T(self.penalty.l1[side]), self._sweeps[side], T(DELTA * DELTA),
                    self.by_rank)
        self._remember_cross(F, P)
