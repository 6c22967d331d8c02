"""Solvers: one iteration of an algorithm, written against the data operator (fastnmf._data),
never against a storage format. An iteration updates W (if enabled) then H (if enabled)."""
from .hals import HALS
from .mu import MU

SOLVER_CLASSES = {"mu": MU, "hals": HALS}
