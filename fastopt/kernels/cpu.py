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

# error_model="numpy": no division-by-zero check that would block SIMD.
# fastmath off: contraction or nnan/ninf would change results, and make them
# depend on whether an element falls in a vector body or in the tail.
_RULE = dict(error_model="numpy", fastmath=False, boundscheck=False)
_LOOP = dict(cache=True, nogil=True, **_RULE)

_sgd = njit(**_RULE)(rules.sgd)
_adagrad = njit(**_RULE)(rules.adagrad)
_adam = njit(**_RULE)(rules.adam)


@njit(**_LOOP)
def sgd_serial(p, g, buf, neg_lr, weight_decay, momentum, one_minus_dampening,
               maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in range(p.shape[0]):
        b = buf[i] if use_momentum else p[i]
        p[i], b = _sgd(g[i], p[i], b, neg_lr, weight_decay, momentum, one_minus_dampening,
                       maximize, use_weight_decay, use_momentum, first_step, nesterov)
        if use_momentum:
            buf[i] = b


@njit(parallel=True, **_LOOP)
def sgd_parallel(p, g, buf, neg_lr, weight_decay, momentum, one_minus_dampening,
                 maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in prange(p.shape[0]):
        b = buf[i] if use_momentum else p[i]
        p[i], b = _sgd(g[i], p[i], b, neg_lr, weight_decay, momentum, one_minus_dampening,
                       maximize, use_weight_decay, use_momentum, first_step, nesterov)
        if use_momentum:
            buf[i] = b


@njit(**_LOOP)
def adagrad_serial(p, g, state_sum, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    for i in range(p.shape[0]):
        p[i], state_sum[i] = _adagrad(g[i], p[i], state_sum[i], neg_clr, weight_decay, eps,
                                      maximize, use_weight_decay)


@njit(parallel=True, **_LOOP)
def adagrad_parallel(p, g, state_sum, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    for i in prange(p.shape[0]):
        p[i], state_sum[i] = _adagrad(g[i], p[i], state_sum[i], neg_clr, weight_decay, eps,
                                      maximize, use_weight_decay)


@njit(**_LOOP)
def adam_serial(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq,
                lerp_weight, lerp_from_end, lerp_weight_complement,
                beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
                weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad):
    for i in range(p.shape[0]):
        vmax = max_exp_avg_sq[i] if amsgrad else exp_avg_sq[i]
        p[i], exp_avg[i], exp_avg_sq[i], vmax = _adam(
            g[i], p[i], exp_avg[i], exp_avg_sq[i], vmax,
            lerp_weight, lerp_from_end, lerp_weight_complement,
            beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
            weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad)
        if amsgrad:
            max_exp_avg_sq[i] = vmax


@njit(parallel=True, **_LOOP)
def adam_parallel(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq,
                  lerp_weight, lerp_from_end, lerp_weight_complement,
                  beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
                  weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad):
    for i in prange(p.shape[0]):
        vmax = max_exp_avg_sq[i] if amsgrad else exp_avg_sq[i]
        p[i], exp_avg[i], exp_avg_sq[i], vmax = _adam(
            g[i], p[i], exp_avg[i], exp_avg_sq[i], vmax,
            lerp_weight, lerp_from_end, lerp_weight_complement,
            beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
            weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad)
        if amsgrad:
            max_exp_avg_sq[i] = vmax


KERNELS = {
    "sgd": {"serial": sgd_serial, "parallel": sgd_parallel},
    "adagrad": {"serial": adagrad_serial, "parallel": adagrad_parallel},
    "adam": {"serial": adam_serial, "parallel": adam_parallel},
}
