"""fastnmf benchmarks: the asv suite (bench_*.py), pytest-benchmark micro benchmarks
(test_bench_kernels.py) and the scikit-learn comparison script (compare_sklearn.py).

See benchmarks/README.md. ``FASTNMF_BENCH_QUICK=1`` shrinks every problem size.
"""
import os
import sys

try:  # asv's "existing" environment runs this suite against an uninstalled checkout
    import fastnmf  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the suite is run
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
