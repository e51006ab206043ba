"""In-place update of one parameter array: ``sgd``, ``adagrad``, ``adam``, ``adamw``.

This is the API for scientific code: you own the arrays (parameter,
gradient, optimizer state) and the step count; each call updates the
parameter and its state in place, in one fused pass over memory, and returns
None. Arrays may have any shape, must be C-contiguous (the gradient may have
any layout; a non-contiguous gradient is copied first), and all must share
one dtype, float32 or float64. The update rules are those of ``torch.optim``
(see each function).

Every argument is checked before anything is written: a call that raises
has changed nothing.

Guards, on every function: ``grad_scale`` divides the gradient first, fused
into the step (mixed-precision loss scaling; done as a multiplication by
``1 / grad_scale``, exact for powers of two). ``check_finite=True`` first
scans the unscaled gradient and, if any element is NaN or infinite, changes
nothing and returns False; otherwise it steps and returns True (on the GPU
this scan waits for its result). Without it a function returns None and
non-finite values propagate, as in torch.

Gradient clipping, on every function: ``max_grad_norm`` clips the gradient
by its norm (``norm_type`` 2, the default, or ``math.inf``) as
``torch.nn.utils.clip_grad_norm_([param], max_grad_norm, norm_type)`` would:
one pass over the (unscaled) gradient takes its norm, and the update
multiplies the gradient by ``min(1, max_grad_norm / (norm + 1e-6))`` (the
gradient is not written). The function then returns that norm, before
clipping, as a float; with ``check_finite`` too, the same pass is the scan,
and the step was taken if and only if the returned norm is finite.

``target`` picks the kernel: None (for NumPy arrays, serial below
``fastopt.config.PARALLEL_THRESHOLD`` elements and, from it up, whichever
of serial and parallel was faster lately, timed; for GPU arrays, CUDA),
"serial", "parallel" or "cuda".

Reduced-precision state: with ``state_dtype="bfloat16"`` each state array
is a bfloat16 array of the parameter's shape (``ml_dtypes.bfloat16``; its
uint16 bits on the GPU); with "int8" or "int4" (parameters of at least 4,096
elements; smaller ones keep float32 state), each state is a pair ``(codes,
absmax)`` as :func:`zeros_state` makes it. The parameter must be float32.

GPU arrays (numba device arrays, CuPy arrays, PyTorch CUDA tensors: anything
with ``__cuda_array_interface__``) take the CUDA kernels, with the same
rules. All arrays of one call must then be on the GPU and C-contiguous; the
update is launched on the parameter's stream and the call returns without
waiting for it (README, "CUDA").
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from . import _checks as C
from . import _replay as R
from . import _spec
from . import _state_dtype as D
from . import _update as U
from .kernels.spec import KERNELS

__all__ = ["sgd", "adagrad", "adam", "adamw", "zeros_state"]

# A NumPy array, or a GPU array (anything with ``__cuda_array_interface__``).
Array = Any

_checked: dict = {}  # (spec name, typed keyword values) -> checked hyperparameters
# Hyperparameters of a class that a one-array call does not take: the caller
# owns the state, so Adagrad's initial accumulator value is theirs to fill.
_NOT_TAKEN = {"SGD": _spec.BFLOAT16_PARAMS, "Adam": _spec.BFLOAT16_PARAMS,
              "AdamW": _spec.BFLOAT16_PARAMS,
              "Adagrad": ("initial_accumulator_value", *_spec.BFLOAT16_PARAMS)}


def _hypers(spec: _spec.Spec, fn: str, given: dict[str, Any]) -> dict[str, Any]:
    """The call's hyperparameters, the spec's defaults filled in, checked (the
    result of a check is remembered for values of the same types)."""
    key = _spec.cache_key(given)
    hit = None if key is None else _checked.get((spec.name, key))
    if hit is not None:
        return hit
    names = spec.defaults
    for name in given:
        if name not in names or name in spec.pinned or name in _NOT_TAKEN.get(spec.name, ()):
            raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}")
    checked = spec.check({**names, **given})
    if key is not None:
        if len(_checked) > 1024:
            _checked.clear()
        _checked[(spec.name, key)] = checked
    return checked


def _signature(spec: _spec.Spec) -> Callable[[Callable], Callable]:
    """Give a function taking ``**hyperparameters`` the spec's hyperparameters,
    keyword-only with their defaults, in its signature, and the spec's update
    rule in its docstring."""
    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        hypers = [p.replace(kind=p.KEYWORD_ONLY) for p in spec.parameters()
                  if p.name not in _NOT_TAKEN.get(spec.name, ())]
        split = next(k for k, p in enumerate(own)
                     if p.kind is p.KEYWORD_ONLY and p.default is not p.empty)
        setattr(fn, "__signature__", sig.replace(parameters=own[:split] + hypers + own[split:]))
        return spec.document(fn)
    return decorate


def zeros_state(param: Array, key: str, state_dtype: str | None = None) -> Any:
    """A zero state array for ``param`` stored as ``state_dtype``, for the functions here.

    ``key`` is the state's name ("exp_avg", "exp_avg_sq", "max_exp_avg_sq",
    "momentum_buffer" or "sum"): it picks the quantization map (signed for
    the first moments). Returns an array (the parameter's dtype, or
    bfloat16), or ``(codes, absmax)`` for "int8"/"int4".

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.zeros(5000, np.float32)
        >>> codes, absmax = F.zeros_state(p, "exp_avg", "int8")
        >>> codes.shape, absmax.shape
        ((5000,), (20,))
    """
    if key not in D.SIGNED:
        raise ValueError(f"key must be one of {sorted(D.SIGNED)}, got {key!r}")
    param = C.check_param("param", param)
    codec = D.resolve(D.check_name(state_dtype), param, "param")
    if not codec:
        from ._arrays import new_like
        return new_like(param, 0)
    stored = D.new(codec, key, param)
    return stored[key] if codec == "bfloat16" else (stored[key], stored[key + "_absmax"])


def _check_stored(codec, name, key, value, param):
    """State ``name`` stored by ``codec``: ``({kernel array name: array}, absmax or None)``."""
    layout = D.layout(codec, param)
    parts = (value,) if codec == "bfloat16" else value
    if codec != "bfloat16" and not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"{name} must be a (codes, absmax) pair with state_dtype={codec!r} "
                        "(see zeros_state)")
    checked = []
    for part, what, (shape, dtype) in zip(parts, ("", " absmax" if codec != "bfloat16" else ""),
                                         layout.values()):
        where = name + what
        if isinstance(param, np.ndarray):
            if not isinstance(part, np.ndarray):
                raise TypeError(f"{where} must be a numpy.ndarray, got {type(part).__name__}")
            part = C._base_ndarray(part)  # (np.matrix, memmaps: a plain view, as for the rest)
        else:
            part = C._device_array(where, part, "param")
        if tuple(part.shape) != shape or part.dtype != dtype:
            raise ValueError(f"{where} must be {dtype}{list(shape)} for a "
                             f"{param.dtype}{list(param.shape)} param with state_dtype={codec!r}, "
                             f"got {part.dtype}{list(part.shape)}")
        if isinstance(part, np.ndarray) and not (part.flags.c_contiguous and part.flags.writeable):
            raise ValueError(f"{where} must be C-contiguous and writeable")
        if what == " absmax" and isinstance(part, np.ndarray) and not (
                np.isfinite(part) & (part >= 0)).all():
            # (as a state dict's are checked: a scale the kernels never make)
            raise ValueError(f"{where} must hold finite block scales >= 0 (the largest "
                             "|value| of each block)")
        checked.append(part)
    return checked[0], (checked[1] if len(checked) > 1 else None)


def _check_arrays(param, grad, states, target, grad_scale, state_dtype=None):
    """Check ``param``, ``grad`` and the named state arrays (and ``target``,
    ``grad_scale`` and ``state_dtype`` against them); return ``(param, grad,
    {name: state}, inv_scale, codec, {name: absmax})``, the arrays as the
    kernels take them."""
    C.check_target(target)
    param = C.check_param("param", param)
    if target is not None:
        C.check_target_matches(target, param, "param")
    codec = D.resolve(state_dtype, param, "param")
    absmax = {}
    if codec:
        checked = {}
        for name, a in states:
            checked[name], scale = _check_stored(codec, name, name, a, param)
            if scale is not None:
                absmax[name] = scale
        states = checked
    else:
        for name, a in states:
            if isinstance(a, tuple) and state_dtype in D.BLOCKWISE:  # resolved to full precision
                raise TypeError(f"{name} is a (codes, absmax) pair, but a parameter of "
                                f"{param.size} elements keeps {state_dtype} state in full "
                                f"precision (block-quantized from {D.MIN_BLOCKWISE_SIZE} elements): "
                                "pass an array (fastopt.functional.zeros_state makes the "
                                "right kind)")
        states = {name: C.check_state(name, a, param, "param") for name, a in states}
    grad = C.check_grad("grad", grad, param, "param")
    C.check_no_overlap([("param", param), ("grad", grad), *states.items(),
                        *((f"{name} absmax", a) for name, a in absmax.items())])
    return (param, grad, states, C.check_grad_scale(grad_scale, (param.dtype,)), codec,
            absmax or None)


def _whole(step):
    """A NumPy integer step count (from np.arange, say) as a Python int, as
    the checks would read it; anything else as given."""
    return int(step) if isinstance(step, np.integer) else step


def _plain(grad_scale, check_finite, max_grad_norm):
    """Whether a call asks for no guard (so a recorded call may stand for it)."""
    return grad_scale is None and check_finite is False and max_grad_norm is None


def _remember(fn, arrays, checked, given, hyper, launched, inv_scale, target, result):
    """Record a checked call that a later one with the same arrays and
    hyperparameters can repeat (``_replay.Call``): one that ran with no guard,
    on host arrays taken as given."""
    key = _spec.cache_key(given)
    name, args = launched
    if (result is None and key is not None
            and R.Call.eligible(arrays, checked, inv_scale, target, name)):
        writes = (True, False) + (True,) * (len(arrays) - 2)
        rule = KERNELS[name].rule_function
        R.remember(fn, arrays,
                   R.Call(arrays, writes, key, hyper, name, args, U.STEP_ARGS[rule], target,
                          U.STEP_SCALARS[rule](hyper)))


def _guard(grad, inv_scale, check_finite, max_grad_norm, norm_type, target):
    """``(skip, inv_scale, result)``: whether ``check_finite`` skips the step (a
    non-finite gradient), the gradient's multiplier with clipping folded in,
    and what the function returns when it steps."""
    check_finite = C.check_flag("check_finite", check_finite)
    clip = C.check_clip(max_grad_norm, norm_type)
    if clip is not None:
        inv_scale, norm, finite = U.clip_scale([grad], inv_scale, *clip, target)
        return check_finite and not finite, inv_scale, norm
    if check_finite and U.any_nonfinite([grad], inv_scale, target):
        return True, inv_scale, False
    return False, inv_scale, True if check_finite else None


@_signature(_spec.SGD)
def sgd(param: Array, grad: Array, momentum_buffer: Array | None = None, *,
        first_step: bool = False, grad_scale: float | None = None, check_finite: bool = False,
        max_grad_norm: float | None = None, norm_type: float = 2.0,
        target: str | None = None, **hyperparameters: Any) -> bool | float | None:
    r"""One SGD step on ``param``, in place (``torch.optim.SGD``'s rule).

    {update_rule}

    The momentum lines apply only when ``momentum`` (:math:`\mu`) is not 0;
    then ``momentum_buffer`` is required, and ``first_step=True`` fills it
    with the gradient instead of reading it (so it may start uninitialised).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(3); buf = np.empty(3)
        >>> F.sgd(p, np.full(3, 0.5), buf, lr=0.1, momentum=0.9, first_step=True)
        >>> p
        array([0.95, 0.95, 0.95])
    """
    arrays = (param, grad, momentum_buffer)
    if _plain(grad_scale, check_finite, max_grad_norm) and type(first_step) is bool:
        call = R.recall("sgd", arrays, hyperparameters, target)
        if call is not None:
            call.run(arrays, call.scalars_of(first_step))
            return None
    h = _hypers(_spec.SGD, "sgd", hyperparameters)
    first_step = C.check_flag("first_step", first_step)
    states = []
    if h["momentum"] != 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer is required when momentum != 0")
        states.append(("momentum_buffer", momentum_buffer))
    param, grad, states, inv_scale, codec, absmax = _check_arrays(
        param, grad, states, target, grad_scale, h["state_dtype"])
    U.check_range("sgd", h, D.plain_dtype(param), "param")
    skip, inv_scale, result = _guard(grad, inv_scale, check_finite, max_grad_norm, norm_type, target)
    if skip:
        return result
    launched = U.sgd(
        p=param, g=grad, buf=states.get("momentum_buffer"), inv_scale=inv_scale, lr=h["lr"],
        momentum=h["momentum"], dampening=h["dampening"], weight_decay=h["weight_decay"],
        nesterov=h["nesterov"], maximize=h["maximize"], first_step=first_step, target=target,
        codec=codec, absmax=absmax and {"buf": absmax["momentum_buffer"]})
    _remember("sgd", arrays, (param, grad, states.get("momentum_buffer")), hyperparameters, h,
              launched, inv_scale, target, result)
    return result


@_signature(_spec.ADAGRAD)
def adagrad(param: Array, grad: Array, state_sum: Array, *, step: int,
            grad_scale: float | None = None, check_finite: bool = False,
            max_grad_norm: float | None = None, norm_type: float = 2.0, target: str | None = None,
            **hyperparameters: Any) -> bool | float | None:
    r"""One Adagrad step on ``param``, in place (``torch.optim.Adagrad``'s rule).

    {update_rule}

    ``step`` is :math:`t`, the 1-based number of this step; :math:`\delta` is
    ``lr_decay``. ``state_sum`` starts filled with the initial accumulator
    value (torch's ``initial_accumulator_value``, default 0).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(2); s = np.zeros(2)
        >>> F.adagrad(p, np.array([1.0, -2.0]), s, step=1, lr=0.5)
        >>> p.round(6), s
        (array([0.5, 1.5]), array([1., 4.]))
    """
    arrays = (param, grad, state_sum)
    step = _whole(step)
    if (_plain(grad_scale, check_finite, max_grad_norm) and type(step) is int
            and 1 <= step < C.STEP_LIMIT):
        call = R.recall("adagrad", arrays, hyperparameters, target)
        if call is not None:
            call.run(arrays, call.scalars_of(step))
            return None
    step = C.check_step(step)
    h = _hypers(_spec.ADAGRAD, "adagrad", hyperparameters)
    param, grad, states, inv_scale, codec, absmax = _check_arrays(
        param, grad, [("state_sum", state_sum)], target, grad_scale, h["state_dtype"])
    U.check_range("adagrad", h, D.plain_dtype(param), "param")
    skip, inv_scale, result = _guard(grad, inv_scale, check_finite, max_grad_norm, norm_type, target)
    if skip:
        return result
    launched = U.adagrad(
        p=param, g=grad, state_sum=states["state_sum"], inv_scale=inv_scale, step=step,
        lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"], eps=h["eps"],
        maximize=h["maximize"], target=target, codec=codec, absmax=absmax)
    _remember("adagrad", arrays, (param, grad, states["state_sum"]), hyperparameters, h,
              launched, inv_scale, target, result)
    return result


def _adam(spec, fn, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, grad_scale,
          check_finite, max_grad_norm, norm_type, target, hyperparameters):
    arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    step = _whole(step)
    if (_plain(grad_scale, check_finite, max_grad_norm) and type(step) is int
            and 1 <= step < C.STEP_LIMIT):
        call = R.recall(fn, arrays, hyperparameters, target)
        if call is not None:
            call.run(arrays, call.scalars_of(step))
            return None
    step = C.check_step(step)
    h = _hypers(spec, fn, hyperparameters)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if h["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True")
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    param, grad, states, inv_scale, codec, absmax = _check_arrays(
        param, grad, states, target, grad_scale, h["state_dtype"])
    U.check_range("adam", h, D.plain_dtype(param), "param")
    skip, inv_scale, result = _guard(grad, inv_scale, check_finite, max_grad_norm, norm_type, target)
    if skip:
        return result
    beta1, beta2 = h["betas"]
    launched = U.adam(
        p=param, g=grad, exp_avg=states["exp_avg"], exp_avg_sq=states["exp_avg_sq"],
        max_exp_avg_sq=states.get("max_exp_avg_sq"), inv_scale=inv_scale, step=step,
        lr=h["lr"], beta1=beta1, beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"],
        amsgrad=h["amsgrad"], maximize=h["maximize"],
        decoupled_weight_decay=h["decoupled_weight_decay"], target=target, codec=codec,
        absmax=absmax)
    _remember(fn, arrays, (param, grad, states["exp_avg"], states["exp_avg_sq"],
                           states.get("max_exp_avg_sq")), hyperparameters, h, launched,
              inv_scale, target, result)
    return result


@_signature(_spec.ADAM)
def adam(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array,
         max_exp_avg_sq: Array | None = None, *, step: int, grad_scale: float | None = None,
         check_finite: bool = False, max_grad_norm: float | None = None, norm_type: float = 2.0,
         target: str | None = None, **hyperparameters: Any) -> bool | float | None:
    r"""One Adam step on ``param``, in place (``torch.optim.Adam``'s rule).

    {update_rule}

    ``step`` is :math:`t`, the 1-based number of this step. ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq``, required with ``amsgrad``) start
    at zero. ``decoupled_weight_decay=True`` is AdamW (see :func:`adamw`).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(2, np.float32); m = np.zeros(2, np.float32); v = np.zeros(2, np.float32)
        >>> F.adam(p, np.array([0.5, -2.0], np.float32), m, v, step=1, lr=0.1)
        >>> p.round(4)
        array([0.9, 1.1], dtype=float32)
    """
    return _adam(_spec.ADAM, "adam", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step,
                 grad_scale, check_finite, max_grad_norm, norm_type, target, hyperparameters)


@_signature(_spec.ADAMW)
def adamw(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array,
          max_exp_avg_sq: Array | None = None, *, step: int, grad_scale: float | None = None,
          check_finite: bool = False, max_grad_norm: float | None = None, norm_type: float = 2.0,
          target: str | None = None, **hyperparameters: Any) -> bool | float | None:
    r"""One AdamW step: :func:`adam` with decoupled weight decay (default 1e-2).

    The parameter is first scaled by :math:`1 - \eta\lambda`, then takes the
    Adam step without weight decay in the gradient (``torch.optim.AdamW``).
    """
    return _adam(_spec.ADAMW, "adamw", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step,
                 grad_scale, check_finite, max_grad_norm, norm_type, target, hyperparameters)
