"""fastnmf: fast non-negative matrix factorization on multicore CPUs (Numba kernels)."""
from ._api import nmf
from ._estimator import NMF, NotFittedError
from ._validation import ConvergenceWarning

__version__ = "0.1.0"
__all__ = ["NMF", "nmf", "ConvergenceWarning", "NotFittedError", "__version__"]
