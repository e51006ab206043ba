"""fastopt's optimizers as methods of ``scipy.optimize.minimize``.

``sgd``, ``adagrad``, ``adam`` and ``adamw`` follow SciPy's protocol for a
custom method, so code written for ``scipy.optimize`` uses them unchanged::

    res = scipy.optimize.minimize(fun, x0, args=(data,), jac=True,
                                  method=fastopt.scipy.adam, callback=cb,
                                  options={"lr": 0.01, "maxiter": 5000, "gtol": 1e-6})

``fun(x, *args)`` returns the objective and its gradient (``jac=True``), or
the objective alone with ``jac`` a function returning the gradient. These are
first-order methods: without a gradient (``jac`` None/False, or a
finite-difference name) they refuse to run; they take no bounds or
constraints. ``x0`` is flattened and copied to float64 (``dtype="float32"``
asks for float32), as SciPy's methods do (``minimize`` itself takes only a
1-D ``x0``; called directly, a method takes any shape); ``fun`` and
``callback`` get a copy of the iterate, which they may keep, as SciPy's
methods give. The optimizer's state lives for
one call.

Options (``options={...}``, or keywords when a method is called directly):

- the optimizer's hyperparameters, with torch's names and defaults (for
  ``adam``: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``; see
  each method's signature). ``maximize`` is not one: negate ``fun``.
- ``maxiter`` (default 1000): the most optimizer steps.
- ``gtol`` (default 1e-5, or ``minimize``'s ``tol``): stop, successfully,
  once the gradient's norm is at most ``gtol``. ``norm`` (default 2, the
  Euclidean norm; SciPy's BFGS uses ``inf``) picks the norm.
- ``ftol`` (default None, off): stop, successfully, once
  ``|f_k - f_{k+1}| <= ftol * max(|f_k|, |f_{k+1}|, 1)``. With a stochastic
  or oscillating objective a single small change can trigger it.
- ``lr_schedule``: a function of the optimizer returning a scheduler,
  stepped after every optimizer step, e.g.
  ``functools.partial(fastopt.lr_scheduler.CosineAnnealingLR, T_max=2000)``.
- ``disp``: print a summary at the end. ``dtype``: "float64" (default) or
  "float32". ``target``: the kernel ("serial", "parallel", None = by size).

Unknown options are warned about (``OptimizeWarning``), as SciPy's own
methods do. ``callback`` is called after each step in either of SciPy's
forms: ``callback(xk)``, or ``callback(intermediate_result)`` (a parameter
of exactly that name) with an ``OptimizeResult`` holding ``x``, ``fun``,
``jac`` and ``nit``; raising ``StopIteration`` in it ends the run with
``status`` 99 and ``success`` False, as in SciPy.

The result is an ``OptimizeResult`` with ``x``, ``fun``, ``jac`` (at ``x``),
``nit`` (steps taken), ``nfev``, ``njev``, ``success``, ``status`` (0:
converged by ``gtol`` or ``ftol``; 1: ``maxiter`` reached; 3: the objective
or gradient became NaN or infinite; 99: the callback stopped it) and
``message``.

This module imports SciPy; ``import fastopt`` does not.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from typing import Any, Callable

try:
    from scipy.optimize import OptimizeResult, OptimizeWarning
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("fastopt.scipy needs SciPy: pip install scipy "
                      "(or pip install 'fastopt[scipy]')") from e

try:  # how minimize(jac=True) wraps fun: unwrapped to call fun once per step
    from scipy.optimize._optimize import MemoizeJac as _MemoizeJac
except ImportError:  # pragma: no cover - a SciPy that moved it
    _MemoizeJac = None

from . import optimizers
from ._scipy_loop import _iterate, _real, _x0
from ._spec import SPECS

__all__ = ["sgd", "adagrad", "adam", "adamw"]

_STATUS = {
    0: "Optimization terminated successfully.",
    1: "Maximum number of iterations has been exceeded.",
    3: "NaN or infinite result encountered.",
    99: "`callback` raised `StopIteration`.",
}
_NOT_AN_OPTION = ("maximize",)  # minimize minimises: negate fun instead


# --- checks ---------------------------------------------------------------------

def _objective(fun: Callable, jac: Any, args: tuple) -> Callable:
    """``f_and_g(x) -> (f, g)``, calling the caller's functions once each
    (with ``jac``, each on its own copy of ``x``, as SciPy's methods call
    them: a ``fun`` that changes its argument does not change ``jac``'s)."""
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if (_MemoizeJac is not None and isinstance(fun, _MemoizeJac)
            and getattr(jac, "__self__", None) is fun):
        fun = fun.fun  # minimize(jac=True): call the caller's fun directly
        jac = True
    if jac is True:
        return fun if not args else lambda x: fun(x, *args)
    if callable(jac):
        def f_and_g(x: Any) -> tuple:
            x_for_jac = x.copy()  # before fun runs
            return fun(x, *args), jac(x_for_jac, *args)
        return f_and_g
    raise ValueError(f"these methods need the gradient: pass jac=True (fun returns (f, g)) or "
                     f"a function jac(x, *args); finite differences (jac='2-point' and the "
                     f"like, which minimize passes on as None) are not supported; "
                     f"got jac={jac!r}")


def _callback(callback: Any) -> Callable | None:
    """``call(x, f, g, nit)`` for either of SciPy's callback forms, or None."""
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    try:
        params = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: the plain form
        params = set()
    if params == {"intermediate_result"}:
        return lambda x, f, g, nit: callback(intermediate_result=OptimizeResult(
            x=x.copy(), fun=f, jac=g.copy(), nit=nit))
    return lambda x, f, g, nit: callback(x.copy())


# --- the loop -------------------------------------------------------------------

def _minimize(cls: type[optimizers.Optimizer], fun: Callable, x0: Any, args: Any, jac: Any,
              hess: Any, hessp: Any, bounds: Any, constraints: Any, callback: Any, maxiter: Any,
              gtol: Any, norm: Any, ftol: Any, lr_schedule: Any, disp: Any, dtype: Any,
              target: Any, tol: Any, hyperparameters: dict[str, Any]) -> OptimizeResult:
    name = cls.__name__.lower()
    # Every check before the first call of fun.
    if bounds is not None:
        raise ValueError(f"fastopt.scipy.{name} takes no bounds (an unconstrained method)")
    if constraints is not None and not (isinstance(constraints, (list, tuple))
                                        and len(constraints) == 0):
        raise ValueError(f"fastopt.scipy.{name} takes no constraints (an unconstrained method)")
    for what, value in (("hess", hess), ("hessp", hessp)):
        if value is not None:
            warnings.warn(f"fastopt.scipy.{name} does not use Hessian information ({what})",
                          RuntimeWarning, stacklevel=4)
    args = args if isinstance(args, tuple) else (args,)
    f_and_g = _objective(fun, jac, args)
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
        raise TypeError(f"maxiter must be an int, got {type(maxiter).__name__}")
    if int(maxiter) < 0:
        raise ValueError(f"maxiter must be >= 0, got {maxiter}")
    gtol = _real("gtol", (1e-5 if tol is None else tol) if gtol is None else gtol)
    ftol = None if ftol is None else _real("ftol", ftol)
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or not (
            float(norm) > 0 or float(norm) == -math.inf):
        raise ValueError(f"norm must be a positive number, inf or -inf, got {norm!r}")
    norm = float(norm)
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError("lr_schedule must be a function of the optimizer returning a scheduler "
                        "(e.g. functools.partial(CosineAnnealingLR, T_max=...)), got "
                        f"{type(lr_schedule).__name__}")
    call_back = _callback(callback)
    x = _x0(x0, dtype)
    opt = cls([x], target=target, **hyperparameters)  # checks the hyperparameters
    sched = None
    if lr_schedule is not None:
        sched = lr_schedule(opt)
        if not callable(getattr(sched, "step", None)):
            raise TypeError(f"lr_schedule(optimizer) must return a scheduler (with step()), "
                            f"got {type(sched).__name__}")
    f, g, nit, nfev, status = _iterate(f_and_g, x, opt, sched, call_back, maxiter, gtol,
                                       norm, ftol)
    message = _STATUS[status]
    if disp:
        print(message)
        print(f"         Current function value: {f:f}")
        print(f"         Iterations: {nit:d}")
        print(f"         Function evaluations: {nfev:d}")
        print(f"         Gradient evaluations: {nfev:d}")
    return OptimizeResult(x=x, fun=f, jac=g.copy(), nit=nit, nfev=nfev, njev=nfev,
                          status=status, success=status == 0, message=message)


# --- the four methods -------------------------------------------------------------

_OWN = {"maxiter": 1000, "gtol": None, "norm": 2, "ftol": None, "lr_schedule": None,
        "disp": False, "dtype": None, "target": None, "tol": None}


def _method(cls: type[optimizers.Optimizer]) -> Callable[..., OptimizeResult]:
    spec = SPECS[cls.spec.name]
    hypers = [p for p in spec.parameters() if p.name not in _NOT_AN_OPTION]
    names = {p.name for p in hypers}
    name = cls.__name__.lower()

    def method(fun: Callable, x0: Any, args: Any = (), jac: Any = None, hess: Any = None,
               hessp: Any = None, bounds: Any = None, constraints: Any = (),
               callback: Any = None, **options: Any) -> OptimizeResult:
        own = {k: options.pop(k, default) for k, default in _OWN.items()}
        hyper = {k: options.pop(k) for k in list(options) if k in names}
        refused = [k for k in options if k in _NOT_AN_OPTION]
        if refused:
            raise ValueError(f"fastopt.scipy.{name} minimises: {refused[0]} is not an option "
                             "(negate fun to maximise)")
        if options:
            warnings.warn(f"Unknown solver options: {', '.join(map(str, options))}",
                          OptimizeWarning, stacklevel=3)
        return _minimize(cls, fun, x0, args, jac, hess, hessp, bounds, constraints, callback,
                         hyperparameters=hyper, **own)

    method.__name__ = method.__qualname__ = name
    method.__module__ = __name__
    own_params = list(inspect.signature(method).parameters.values())[:-1]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in _OWN.items()]
    hyper_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in hypers]
    setattr(method, "__signature__", inspect.Signature(own_params + hyper_params + extra))
    method.__doc__ = f"""Minimise ``fun`` with {cls.__name__} (torch.optim.{cls.__name__}'s rule).

    A method for ``scipy.optimize.minimize``: pass ``jac=True``,
    ``method=fastopt.scipy.{name}`` and the options in ``options={{...}}``; or
    call it directly with the same arguments, the options as keywords.
    The options are {cls.__name__}'s hyperparameters, with torch's defaults
    ({', '.join(p.name for p in hypers)}),
    and ``maxiter``, ``gtol``, ``norm``, ``ftol``, ``lr_schedule``, ``disp``,
    ``dtype``, ``target`` (see :mod:`fastopt.scipy`).

    Returns
    -------
    OptimizeResult
        ``x``, ``fun``, ``jac``, ``nit``, ``nfev``, ``njev``, ``success``,
        ``status`` and ``message``.
    """
    return method


sgd = _method(optimizers.SGD)
adagrad = _method(optimizers.Adagrad)
adam = _method(optimizers.Adam)
adamw = _method(optimizers.AdamW)
