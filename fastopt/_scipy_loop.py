"""The SciPy-free core of ``fastopt.scipy``: the values the caller passes and
gets back (``x0``, the objective and gradient) checked and converted, the
gradient's norm, and the iteration loop with its stopping rules."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np


def _real(name: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not value >= low:  # NaN too
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _x0(x0: Any, dtype: Any) -> np.ndarray:
    """``x0`` as a fresh, flat, C-contiguous array of the asked dtype."""
    try:
        want = np.dtype("float64" if dtype is None else dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if want not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    a = np.asarray(x0)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"x0 must hold real numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError("x0 is empty")
    return np.array(a.reshape(-1), dtype=want)  # a copy that owns its memory


def _scalar(f: Any) -> float:
    if isinstance(f, float):
        return f
    a = np.asarray(f)
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise ValueError(f"fun must return a real scalar objective, got {f!r}")
    return float(a.reshape(()))


def _pair(out: Any) -> tuple[Any, Any]:
    try:
        f, g = out
    except (TypeError, ValueError):
        raise TypeError("with jac=True, fun must return (objective, gradient), got "
                        f"{type(out).__name__}") from None
    return f, g


def _gradient(g: Any, x: np.ndarray) -> np.ndarray:
    """``g`` as an array of ``x``'s dtype and shape."""
    a = np.asarray(g)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"the gradient must hold real numbers, got dtype {a.dtype}")
    if a.size != x.size:
        raise ValueError(f"the gradient has shape {a.shape}; x has {x.size} elements")
    return np.ascontiguousarray(a, dtype=x.dtype).reshape(x.shape)


def _norm(g: np.ndarray, norm: float) -> float:
    """The ``norm``-norm of ``g``, scaled so that large finite entries do not overflow."""
    scale = float(np.max(np.abs(g)))
    if not 0 < scale < math.inf:
        return scale
    return scale * float(np.linalg.norm(g / scale, norm))


def _iterate(f_and_g: Callable, x: np.ndarray, opt: Any, sched: Any, call_back: Callable | None,
             maxiter: Any, gtol: float, norm: float,
             ftol: float | None) -> tuple[float, np.ndarray, int, int, int]:
    """Step ``opt`` over ``x`` until a stopping rule holds.

    Returns ``(f, g, nit, nfev, status)``, ``status`` as in ``fastopt.scipy``'s
    results (0 converged, 1 ``maxiter`` reached, 3 not finite, 99 stopped
    by the callback).
    """
    two = norm == 2.0
    dt, shape = x.dtype, x.shape

    def evaluate() -> tuple[float, np.ndarray]:
        out = f_and_g(x.copy())
        if type(out) is tuple and len(out) == 2:
            f, g = out
        else:
            f, g = _pair(out)
        if not isinstance(f, float):
            f = _scalar(f)
        if type(g) is not np.ndarray or g.dtype is not dt or g.shape != shape:
            g = _gradient(g, x)
        return f, g

    f, g = evaluate()
    nfev = 1
    nit = 0
    while True:
        gnorm = math.sqrt(g.dot(g)) if two else math.inf
        if gnorm == math.inf:  # not the 2-norm, or g @ g overflowed
            gnorm = _norm(g, norm)
        if not (math.isfinite(f) and math.isfinite(gnorm)):
            status = 3
            break
        if gnorm <= gtol:
            status = 0
            break
        if nit >= maxiter:
            status = 1
            break
        opt.step([g])
        nit += 1
        if sched is not None:
            sched.step()
        f_before = f
        f, g = evaluate()
        nfev += 1
        if call_back is not None:
            try:
                call_back(x, f, g, nit)
            except StopIteration:
                status = 99
                break
        if ftol is not None and abs(f_before - f) <= ftol * max(abs(f_before), abs(f), 1.0):
            status = 0
            break
    return f, g, nit, nfev, status
