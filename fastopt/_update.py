"""Unchecked updates of one parameter: what the checked API and the optimizers call.

Every argument is keyword-only and none is checked: callers (``functional``,
``optimizers``) have checked the arrays (same shape and dtype, C-contiguous,
not overlapping) and the hyperparameters. The host-side scalars are computed
here in float64, as torch computes them, then cast to the arrays' dtype;
``spec.pack`` puts them in the kernel's order by name.

Reduced-precision state (``_state_dtype``): ``codec`` names how the state
arrays are stored ("" for the parameter's dtype, "bfloat16", "int8",
"int4"); with a block-wise codec, ``absmax`` maps each state array's name
(the kernel's) to its per-block scales.

bfloat16 parameters (and gradients) take the ``_p16`` kernels: float32
state and scalars, the parameter written back rounded to nearest or, with
``stochastic``, at random (stream ``seed``); with a float32 ``master`` copy,
the rule updates the copy and the parameter is its rounding.
"""

import math

import numpy as np

from . import _state_dtype
from ._dispatch import kernel
from .kernels.spec import kernel_name, pack

_KERNEL_CODEC = {"": "", "bfloat16": "bf16", "int8": "int8", "int4": "int4"}

_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


class _Scalars(dict):
    """Python numbers as NumPy scalars of one dtype, remembered: in NumPy 2,
    ``np.float32(x)`` costs most of a microsecond, and a step passes a dozen
    scalars, most of them the same from step to step. +0.0 and -0.0 compare
    equal, so a zero is remembered under its sign too."""

    def __init__(self, dtype):
        super().__init__()
        self.type = np.dtype(dtype).type

    def __call__(self, value):
        key = value if value != 0 else (0, math.copysign(1.0, value))
        scalar = self.get(key)
        if scalar is None:
            if len(self) > 4096:  # a schedule's every learning rate: start afresh
                self.clear()
            scalar = self[key] = self.type(value)
        return scalar


SCALARS = {np.dtype(t): _Scalars(t) for t in (np.float32, np.float64)}


def _flat(a):
    # ravel, not reshape: a numba device array keeps its stream through ravel.
    return a if a.ndim == 1 else a.ravel()


def _absent(p):
    """A stand-in for a state array a flag switches off: never read or written."""
    return _EMPTY[_state_dtype.plain_dtype(p)] if isinstance(p, np.ndarray) else _flat(p)[:0]


def rounding_seed(seed, step, size):
    """The 32-bit seed of stochastic rounding at step ``step`` of a parameter
    of ``size`` elements, under the user's ``seed`` (a new stream each step)."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + size * 0xC2B2AE3D) & 0xFFFFFFFF


def _bits(a):
    """bfloat16 array ``a`` as the uint16 bits the ``_p16`` kernels take."""
    return _flat(a).view(np.uint16)


def _run(rule, codec, target, p, states, absmax, master=None, stochastic=False, seed=0,
         **values):
    """Launch ``rule``'s kernel for ``codec``: ``states`` maps the kernel's state
    arguments to their arrays (None: switched off, an empty stand-in);
    ``master``, ``stochastic`` and ``seed`` for bfloat16 parameters."""
    for name, a in states.items():
        if a is None:
            values[name] = _absent(p) if not codec else _absent_coded(codec, p)
            if codec in _state_dtype.BLOCKWISE:
                values[name + "_absmax"] = _absent(p)
        elif codec:
            values[name] = _state_dtype.kernel_view(codec, a)
            if codec in _state_dtype.BLOCKWISE:
                values[name + "_absmax"] = absmax[name]
        else:
            values[name] = _flat(a)
    if codec in _state_dtype.BLOCKWISE:
        values["qmaps"], values["qluts"] = _state_dtype.tables(codec, p)
    params = ""
    if _state_dtype.is_bfloat16(p):
        params = "p16" if master is None else "p16m"
        values.update(g=_bits(values["g"]), seed=np.uint32(seed), stochastic=stochastic)
        if master is not None:
            values["master"] = _flat(master)
        flat_p = _bits(p)
    else:
        flat_p = _flat(p)
    name = kernel_name(rule, _KERNEL_CODEC[codec], params)
    args = pack[name](p=flat_p, **values)
    kernel(name, target, p)(*args)
    return name, args


def _absent_coded(codec, p):
    stand_in = _EMPTY_CODED[codec]
    return stand_in if isinstance(p, np.ndarray) else _flat(p)[:0].view(stand_in.dtype)


_EMPTY_CODED = {"bfloat16": np.empty(0, np.uint16), "int8": np.empty(0, np.uint8),
                "int4": np.empty(0, np.uint8)}


def any_nonfinite(grads, inv_scale, target):
    """Whether any element of any gradient in ``grads``, times ``inv_scale``, is
    NaN or infinite. On the GPU: one flag, one launch per gradient, one wait."""
    if not grads:
        return False
    if target == "cuda" or not isinstance(grads[0], np.ndarray):
        from . import _cuda
        return _cuda.any_nonfinite([_flat(g) for g in grads],
                                             [g.dtype.type(inv_scale) for g in grads])
    grads = [_widened(g) for g in grads]
    return any(kernel("any_nonfinite", target, g)(_flat(g), g.dtype.type(inv_scale))
               for g in grads)


def _widened(g):
    """Host gradient ``g`` in a dtype the scans take: bfloat16 widened
    (exactly) to float32, the dtype its update computes in."""
    return g.astype(np.float32) if _state_dtype.is_bfloat16(g) else g


# The integer view of each float dtype, and the mask that clears its sign bit.
_BITS = {np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF)),
         np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))}


def grad_norm(grads, inv_scale, norm_type, target):
    """The ``norm_type`` (2 or inf) norm of all of ``grads`` together, each
    times ``inv_scale`` (cast to its dtype), as a Python float: one pass over
    each gradient. NaN if any element is NaN; infinite if any is infinite
    (or, for the 2-norm, if the sum of squares overflows float64); 0.0 for
    no gradients."""
    if not grads:
        return 0.0
    inf = norm_type == math.inf
    if target == "cuda" or not isinstance(grads[0], np.ndarray):
        from . import _cuda
        return _cuda.grad_norm([_flat(g) for g in grads], inv_scale, inf)
    grads = [_widened(g) for g in grads]
    if not inf:
        return math.sqrt(sum(kernel("sq_norm", target, g)(_flat(g), g.dtype.type(inv_scale))
                             for g in grads))
    return max_abs_norm([(g.dtype, kernel("max_abs_bits", target, g)(_flat(g).view(_BITS[g.dtype][0]),
                                                                      _BITS[g.dtype][1]))
                         for g in grads], inv_scale)


def clip_scale(grads, inv_scale, max_norm, norm_type, target):
    """``(inv_scale times the clipping coefficient, norm, whether the norm is
    finite)`` for clipping ``grads`` (times ``inv_scale``) to ``max_norm``:
    the coefficient is ``torch.nn.utils.clip_grad_norm_``'s,
    ``min(1, max_norm / (norm + 1e-6))``, computed in float64 (NaN for a
    NaN norm, 0 for an infinite one, as in torch)."""
    norm = grad_norm(grads, inv_scale, norm_type, target)
    coefficient = min(max_norm / (norm + 1e-6), 1.0)  # min keeps a NaN first argument
    return inv_scale * coefficient, norm, math.isfinite(norm)


def max_abs_norm(largest, inv_scale):
    """The inf-norm from ``[(dtype, largest sign-masked bits of a gradient)]``:
    the largest |g| times ``inv_scale``, computed in each dtype (rounding is
    monotonic, so this is the largest |g * inv_scale|); NaN if any is NaN."""
    norms = []
    for dtype, bits in largest:
        ints = _BITS[np.dtype(dtype)][0]
        value = np.array(bits, dtype=ints).view(dtype)[()]
        norms.append(float(value * dtype.type(inv_scale)))
    if any(math.isnan(x) for x in norms):
        return math.nan
    return max(norms)


# The scalars of each rule that change from step to step (with the step count,
# or a schedule's learning rate), by kernel argument name (``_replay`` sets
# only these), and the functions that compute them, as Python floats (the
# replay passes them so; the checked path casts them). Each ``*_scalars`` takes
# the hyperparameters and returns the function of the step (of whether it is
# the first, for SGD) that gives them: a replay makes it once and calls it
# every step. ``STEP_SCALARS[rule](hyper)`` makes it from checked hyperparameters.
STEP_ARGS = {"sgd": ("neg_lr", "first_step"), "adagrad": ("neg_clr",),
             "adam": ("neg_step_size", "bias_correction2_sqrt", "decay_factor")}


def sgd_scalars(lr):
    """``first_step -> (neg_lr, first_step)``."""
    neg_lr = -lr
    return lambda first_step: (neg_lr, first_step)


def adagrad_scalars(lr, lr_decay):
    """``step -> (neg_clr,)``: minus the decayed learning rate of step ``step``."""
    return lambda step: (-(lr / (1 + (step - 1) * lr_decay)),)


def adam_scalars(lr, beta1, beta2, weight_decay, decoupled_weight_decay):
    """``step -> (neg_step_size, bias_correction2_sqrt, decay_factor)``:
    ``decay_factor`` is ``1 - lr * weight_decay`` with decoupled weight
    decay, else 1 (the rule multiplies by it either way)."""
    decay_factor = 1 - lr * weight_decay if weight_decay != 0 and decoupled_weight_decay else 1.0
    return lambda step: (-(lr / (1 - beta1 ** step)), (1 - beta2 ** step) ** 0.5, decay_factor)


STEP_SCALARS = {
    "sgd": lambda h: sgd_scalars(h["lr"]),
    "adagrad": lambda h: adagrad_scalars(h["lr"], h["lr_decay"]),
    "adam": lambda h: adam_scalars(h["lr"], h["betas"][0], h["betas"][1], h["weight_decay"],
                                   h["decoupled_weight_decay"]),
}


# The hyperparameters each rule passes to its kernel cast to the parameter's
# dtype as they are (the others reach it through STEP_SCALARS, or lie in [0, 1]),
# and how a message names each step scalar.
_CAST = {"sgd": ("weight_decay", "momentum", "dampening"),
         "adagrad": ("weight_decay", "eps", "initial_accumulator_value"),
         "adam": ("weight_decay", "eps")}
_SCALAR_NAMES = {"neg_lr": "lr", "neg_clr": "lr / (1 + (step - 1) * lr_decay)",
                 "neg_step_size": "the step size lr / (1 - beta1**step)",
                 "decay_factor": "1 - lr * weight_decay"}


def check_range(rule, hyper, dtype, where):
    """Refuse hyperparameters whose values in a step of ``rule`` are finite
    but beyond the range of ``dtype`` (float32: about 3.4e38), as torch
    refuses them: cast, they would be infinite and make the parameters
    infinite. The step's scalars are largest at the first step (the bias
    correction and the decay of Adagrad's rate only shrink them), so one
    check holds for every step. ``where`` names the parameter."""
    if np.dtype(dtype) != np.float32:
        return
    values = {name: hyper[name] for name in _CAST[rule] if name in hyper}
    values.update(zip(STEP_ARGS[rule], STEP_SCALARS[rule](hyper)(1)))
    for name, value in values.items():
        if type(value) is float and abs(value) > 3.4e38 and math.isfinite(value):
            with np.errstate(over="ignore"):
                if np.isinf(np.float32(value)):
                    shown = -value if name.startswith("neg_") else value
                    raise ValueError(f"{where}: {_SCALAR_NAMES.get(name, name)} is {shown:.4g}"
                                     f"{' at the first step' if name in STEP_ARGS[rule] else ''}"
                                     ", beyond float32's range (about 3.4e38)")


# The kernel arguments that follow a momentum hyperparameter (SGD's momentum,
# Adam's betas), besides the step's scalars: made here for the checked step,
# and again by a replay when a schedule (OneCycleLR) changes that
# hyperparameter. ``MOMENTUM_ARGS[rule](hyper, T)`` gives them, cast by ``T``
# (Adagrad has none: its ``MOMENTUM_KEYS`` are empty).
def sgd_momentum_args(momentum, T):
    return {"momentum": T(momentum), "use_momentum": momentum != 0}


def adam_momentum_args(beta1, beta2, T):
    lerp_weight = T(1 - beta1)
    return {"lerp_weight": lerp_weight, "lerp_weight_complement": T(1) - lerp_weight,
            "beta2": T(beta2), "one_minus_beta2": T(1 - beta2),
            "lerp_from_end": not abs(lerp_weight) < 0.5}


MOMENTUM_KEYS = {"sgd": ("momentum",), "adagrad": (), "adam": ("betas",)}
MOMENTUM_ARGS = {
    "sgd": lambda h, T: sgd_momentum_args(h["momentum"], T),
    "adam": lambda h, T: adam_momentum_args(h["betas"][0], h["betas"][1], T),
}


def sgd(*, p, g, buf, inv_scale, lr, momentum, dampening, weight_decay, nesterov, maximize,
        first_step, target, codec="", absmax=None, master=None):
    T = SCALARS[_state_dtype.plain_dtype(p)]
    moment = sgd_momentum_args(momentum, T)
    use_momentum = moment["use_momentum"]
    return _run("sgd", codec if use_momentum else "", target, p,
                {"buf": buf if use_momentum else None}, absmax, master, g=_flat(g),
                inv_scale=T(inv_scale), neg_lr=T(sgd_scalars(lr)(first_step)[0]),
                weight_decay=T(weight_decay), **moment,
                one_minus_dampening=T(1.0 - dampening), maximize=maximize,
                use_weight_decay=weight_decay != 0, first_step=first_step, nesterov=nesterov)


def adagrad(*, p, g, state_sum, inv_scale, step, lr, lr_decay, weight_decay, eps, maximize, target,
            codec="", absmax=None, master=None, stochastic=False, seed=0):
    T = SCALARS[_state_dtype.plain_dtype(p)]
    (neg_clr,) = adagrad_scalars(lr, lr_decay)(step)
    return _run("adagrad", codec, target, p, {"state_sum": state_sum}, absmax,
                master, stochastic, seed, g=_flat(g), inv_scale=T(inv_scale),
                neg_clr=T(neg_clr), weight_decay=T(weight_decay), eps=T(eps), maximize=maximize,
                use_weight_decay=weight_decay != 0)


def adam(*, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, inv_scale, step, lr, beta1, beta2, eps,
         weight_decay, amsgrad, maximize, decoupled_weight_decay, target, codec="", absmax=None,
         master=None, stochastic=False, seed=0):
    T = SCALARS[_state_dtype.plain_dtype(p)]
    neg_step_size, bias_correction2_sqrt, decay_factor = adam_scalars(
        lr, beta1, beta2, weight_decay, decoupled_weight_decay)(step)
    decay = weight_decay != 0
    return _run("adam", codec, target, p, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                                           "max_exp_avg_sq": max_exp_avg_sq if amsgrad else None},
                absmax, master, stochastic, seed, g=_flat(g), inv_scale=T(inv_scale),
                **adam_momentum_args(beta1, beta2, T), neg_step_size=T(neg_step_size),
                bias_correction2_sqrt=T(bias_correction2_sqrt), eps=T(eps),
                weight_decay=T(weight_decay),
                decay_factor=T(decay_factor),
                maximize=maximize,
                l2_decay=decay and not decoupled_weight_decay,
                amsgrad=amsgrad)
