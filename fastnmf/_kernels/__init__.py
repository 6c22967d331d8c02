"""Numba kernels: in-place loops, no allocation policy, no validation, return at most a scalar.

Callers (fastnmf._data, fastnmf.solvers) validate shapes, dtypes and index ranges first:
the kernels do no bounds checks.
"""
