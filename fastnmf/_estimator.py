"""``fastnmf.NMF``: a scikit-learn style estimator over ``fastnmf.nmf``.

Parameter and attribute names follow ``sklearn.decomposition.NMF`` where the concept is the
same, so code can switch by changing the import. scikit-learn is not needed at run time.
"""
import inspect

import numpy as np
import scipy.sparse as sp

from ._api import nmf


class NotFittedError(ValueError, AttributeError):
    """The estimator was used before ``fit``."""


class NMF:
    """Non-negative matrix factorization X ~ W H minimizing a beta-divergence.

    See ``fastnmf.nmf`` for the meaning of every parameter. After ``fit``:
    ``components_`` (H, r x n), ``n_components_``, ``n_features_in_``, ``n_iter_``,
    ``reconstruction_err_`` (sqrt(2 * data loss); ||X - WH||_F for Frobenius),
    ``loss_history_`` (objective at ``loss_iterations_``), ``fit_info_`` (all of nmf's info).
    """

    def __init__(self, n_components=None, *, init=None, solver="auto", beta_loss="frobenius",
                 tol=1e-4, max_iter=200, random_state=None, alpha_W=0.0, alpha_H="same",
                 l1_ratio=0.0, verbose=0, n_threads=None, max_time=None, eval_every=10,
                 callback=None):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.n_threads = n_threads
        self.max_time = max_time
        self.eval_every = eval_every
        self.callback = callback

    # -- parameters (the scikit-learn protocol, without depending on it) -------------------
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid parameters are {valid}.")
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__)
                    .parameters.values() if p.name != "self"}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if not (v is defaults[k] or (isinstance(v, (int, float, str)) and
                                                 type(v) is type(defaults[k]) and
                                                 v == defaults[k]))]
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- fitting ------------------------------------------------------------------------------
    def _kwargs(self):
        p = self.get_params()
        p.pop("n_components")
        return p

    def fit_transform(self, X, y=None, W=None, H=None, update_W=True, update_H=True):
        """Learn W and H from X and return W. ``W``/``H``: custom start (init="custom") or the
        fixed factor when ``update_W``/``update_H`` is False."""
        W_, H_, info = nmf(X, self.n_components, W=W, H=H, update_W=update_W,
                           update_H=update_H, **self._kwargs())
        self.components_ = H_
        self.n_components_ = H_.shape[0]
        self.n_features_in_ = H_.shape[1]
        self.n_iter_ = info["n_iter"]
        self.reconstruction_err_ = info["reconstruction_err"]
        self.loss_history_ = np.asarray(info["loss_history"])
        self.loss_iterations_ = np.asarray(info["loss_iterations"])
        self.fit_info_ = info
        return W_

    def fit(self, X, y=None, **params):
        self.fit_transform(X, y, **params)
        return self

    def _check_fitted(self):
        if not hasattr(self, "components_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; "
                                 "call fit or fit_transform first.")

    def transform(self, X):
        """W for new rows X with the learned components fixed (same loss, solver, penalties
        on W, tolerance and iterations as the fit)."""
        self._check_fitted()
        shape = getattr(X, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {shape}; transform expects "
                             f"(n_samples, {self.n_features_in_}) as seen in fit.")
        kw = self._kwargs()
        kw.update(init=None, callback=None)
        W_, _, _ = nmf(X, self.n_components_, H=self.components_, update_H=False, **kw)
        return W_

    def inverse_transform(self, X=None, *, W=None):
        """The reconstruction W @ components_ (``X`` is the W returned by transform, named as
        in scikit-learn)."""
        self._check_fitted()
        W = X if X is not None else W
        if W is None:
            raise ValueError("inverse_transform needs W (the output of transform).")
        if sp.issparse(W):
            W = W.toarray()
        W = np.asarray(W)
        if W.ndim != 2 or W.shape[1] != self.n_components_:
            raise ValueError(f"W has shape {W.shape}; inverse_transform expects "
                             f"(n_samples, {self.n_components_}).")
        return W @ self.components_
