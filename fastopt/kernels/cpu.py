"""Fused CPU loops: one pass over memory per optimizer step.

Each optimizer has a serial loop and a parallel (``prange``) loop around the
element rule of ``rules.py``. Flags are booleans that do not change inside
the loop; LLVM hoists the branches out, so each flag combination runs as its
own vectorised loop (checked by ``tests/test_kernels.py``).

Arrays are C-contiguous 1-D views and scalars have the arrays' dtype. State
arrays a flag switches off (the momentum buffer without momentum,
``max_exp_avg_sq`` without amsgrad) may be empty: they are never touched.

Serial and parallel loops are separate Python functions, not one function
jitted twice, so each has its own entry in numba's on-disk cache.
"""

from numba import njit, prange

from . import rules
from ._jit import RULE, loop

_sgd = njit(**RULE)(rules.sgd)
_adagrad = njit(**RULE)(rules.adagrad)
_adam = njit(**RULE)(rules.adam)


@loop()
def sgd_serial(p, g, buf, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
               maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in range(p.shape[0]):
        b = buf[i] if use_momentum else p[i]
        p[i], b = _sgd(g[i], p[i], b, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
                       maximize, use_weight_decay, use_momentum, first_step, nesterov)
        if use_momentum:
            buf[i] = b


@loop(parallel=True)
def sgd_parallel(p, g, buf, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
                 maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in prange(p.shape[0]):
        b = buf[i] if use_momentum else p[i]
        p[i], b = _sgd(g[i], p[i], b, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
                       maximize, use_weight_decay, use_momentum, first_step, nesterov)
        if use_momentum:
            buf[i] = b


@loop()
def adagrad_serial(p, g, state_sum, inv_scale, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    for i in range(p.shape[0]):
        p[i], state_sum[i] = _adagrad(g[i], p[i], state_sum[i], inv_scale, neg_clr, weight_decay, eps,
                                      maximize, use_weight_decay)


@loop(parallel=True)
def adagrad_parallel(p, g, state_sum, inv_scale, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    for i in prange(p.shape[0]):
        p[i], state_sum[i] = _adagrad(g[i], p[i], state_sum[i], inv_scale, neg_clr, weight_decay, eps,
                                      maximize, use_weight_decay)


@loop()
def adam_serial(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, inv_scale,
                lerp_weight, lerp_from_end, lerp_weight_complement,
                beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
                weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad):
    for i in range(p.shape[0]):
        vmax = max_exp_avg_sq[i] if amsgrad else exp_avg_sq[i]
        p[i], exp_avg[i], exp_avg_sq[i], vmax = _adam(
            g[i], p[i], exp_avg[i], exp_avg_sq[i], vmax, inv_scale,
            lerp_weight, lerp_from_end, lerp_weight_complement,
            beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
            weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad)
        if amsgrad:
            max_exp_avg_sq[i] = vmax


@loop(parallel=True)
def adam_parallel(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, inv_scale,
                  lerp_weight, lerp_from_end, lerp_weight_complement,
                  beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
                  weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad):
    for i in prange(p.shape[0]):
        vmax = max_exp_avg_sq[i] if amsgrad else exp_avg_sq[i]
        p[i], exp_avg[i], exp_avg_sq[i], vmax = _adam(
            g[i], p[i], exp_avg[i], exp_avg_sq[i], vmax, inv_scale,
            lerp_weight, lerp_from_end, lerp_weight_complement,
            beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
            weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad)
        if amsgrad:
            max_exp_avg_sq[i] = vmax


# The number of gradient elements that are NaN or infinite once unscaled
# (x - x is 0 exactly for every finite x, NaN for inf and NaN).

@loop()
def count_nonfinite_serial(g, inv_scale):
    n = 0
    for i in range(g.shape[0]):
        x = g[i] * inv_scale
        n += 0 if x - x == 0 else 1
    return n


@loop(parallel=True)
def count_nonfinite_parallel(g, inv_scale):
    n = 0
    for i in prange(g.shape[0]):
        x = g[i] * inv_scale
        n += 0 if x - x == 0 else 1
    return n


KERNELS = {
    "sgd": {"serial": sgd_serial, "parallel": sgd_parallel},
    "adagrad": {"serial": adagrad_serial, "parallel": adagrad_parallel},
    "adam": {"serial": adam_serial, "parallel": adam_parallel},
    "count_nonfinite": {"serial": count_nonfinite_serial, "parallel": count_nonfinite_parallel},
}
