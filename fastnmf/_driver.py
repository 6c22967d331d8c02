"""The one loop every solver runs in: step -> (loss at a cadence) -> stop tests -> callback."""
import time
import warnings

from ._validation import ConvergenceWarning


class FitResult:
    """What a fit returns besides the factors."""

    def __init__(self, n_iter, loss, loss_history, loss_iterations, converged, stop_reason,
                 elapsed):
        self.n_iter = n_iter
        self.loss = loss
        self.loss_history = loss_history
        self.loss_iterations = loss_iterations
        self.converged = converged
        self.stop_reason = stop_reason
        self.elapsed = elapsed

    def as_dict(self):
        return dict(self.__dict__)


def run(solver, *, max_iter, tol, eval_every, max_time=None, callback=None, verbose=0):
    """Iterate ``solver`` until a stop rule fires.

    Stop rules: ``max_iter`` iterations; relative decrease of the objective between two
    evaluations (every ``eval_every`` iterations) below ``tol``; ``max_time`` seconds;
    ``callback(iteration, W, H, loss)`` returning True (called at every evaluation; W and H are
    views of the working factors: read, do not modify). KeyboardInterrupt stops the fit with
    the last complete iterate and a warning.
    """
    start = time.perf_counter()
    loss = solver.objective()
    history, iters = [loss], [0]
    if verbose:
        print(f"iter {0:>6d}  loss {loss:.6e}  time {0.0:8.3f}s")
    prev = loss
    n_iter, converged, reason = 0, False, "max_iter"
    evaluated_last = True
    try:
        for it in range(1, max_iter + 1):
            want = it % eval_every == 0 or it == max_iter
            value = solver.step(want)
            n_iter = it
            evaluated_last = want
            elapsed = time.perf_counter() - start
            if want:
                loss = value
                history.append(loss)
                iters.append(it)
                if verbose:
                    print(f"iter {it:>6d}  loss {loss:.6e}  time {elapsed:8.3f}s")
                if callback is not None and callback(it, solver.W, solver.Ht.T, loss):
                    reason = "callback"
                    break
                if tol > 0 and (prev - loss) <= tol * abs(prev):
                    converged, reason = True, "tol"
                    break
                prev = loss
            if max_time is not None and elapsed >= max_time:
                reason = "max_time"
                break
    except KeyboardInterrupt:
        reason, evaluated_last = "interrupted", False
        warnings.warn(f"fit interrupted after {n_iter} complete iterations; the factors are "
                      "those of the last complete iteration.", RuntimeWarning, stacklevel=3)
    if not evaluated_last:
        loss = solver.objective()
        history.append(loss)
        iters.append(n_iter)
    if reason == "max_iter" and tol > 0:
        warnings.warn(f"Maximum number of iterations {max_iter} reached before the relative "
                      f"decrease fell below tol={tol:g}. Increase max_iter or tol.",
                      ConvergenceWarning, stacklevel=3)
    return FitResult(n_iter, loss, history, iters, converged, reason,
                     time.perf_counter() - start)
