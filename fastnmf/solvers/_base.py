import numpy as np


class Penalty:
    """Elementwise L1 and L2 weights per factor: l1 * sum(F) + 0.5 * l2 * ||F||_F^2."""

    def __init__(self, l1_W=0.0, l2_W=0.0, l1_H=0.0, l2_H=0.0):
        self.l1 = {"W": float(l1_W), "H": float(l1_H)}
        self.l2 = {"W": float(l2_W), "H": float(l2_H)}

    def value(self, W, Ht):
        total = 0.0
        for side, F in (("W", W), ("H", Ht)):
            if self.l1[side]:
                total += self.l1[side] * float(F.sum(dtype=np.float64))
            if self.l2[side]:
                F64 = F.astype(np.float64, copy=False).ravel()
                total += 0.5 * self.l2[side] * float(F64 @ F64)
        return total


class Solver:
    """Holds the operator, the factors (W, Ht) updated in place, and reusable buffers."""

    def __init__(self, op, W, Ht, beta, penalty, update_W=True, update_H=True):
        self.op = op
        self.W = W
        self.Ht = Ht
        self.beta = beta
        self.penalty = penalty
        self.dtype = W.dtype
        self.sides = [s for s, on in (("W", update_W), ("H", update_H)) if on]
        self.by_rank = op.rank_kernels(W.shape[1])   # kernels compiled per rank, or shared
        self._cross_from = None

    def factors(self, side):
        """(F, G): the factor updated on ``side`` and the fixed one."""
        return (self.W, self.Ht) if side == "W" else (self.Ht, self.W)

    def data_loss(self):
        return self.op.loss(self.W, self.Ht, self.beta, cross_from=self._cross_from)

    def objective(self):
        """Data loss plus penalties, float64, at the current factors."""
        return self.data_loss() + self.penalty.value(self.W, self.Ht)

    def step(self, want_loss):
        """One iteration; returns the objective when ``want_loss``, else None."""
        self._cross_from = None
        for side in self.sides:
            self._update(side)
        if not want_loss:
            return None
        return self.objective()

    def _remember_cross(self, F, P):
        """After F was updated with P = A G and G is unchanged, <F, P> = <W, X Ht>: the
        Frobenius loss may then skip its product with X (the operator decides; float64 only)."""
        self._cross_from = (F, P)
