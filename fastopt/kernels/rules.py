"""The update rules, one element at a time, as plain Python functions.

Each function takes the current values of one element (parameter, gradient,
state) and the step's scalars and flags, and returns the new values. Its
parameters are those its kernel declares in ``spec.py``, in that order (the
loops pass them positionally, as CUDA device functions need; a test checks
the names and order). A kernel with reduced-precision state calls the same
rule with the float32 values its codec (``codecs.py``) decoded. They have no
loads or stores of their own: the loops in ``cpu.py`` (and, with the CUDA
target, ``cuda.py``) read the arrays, call these (compiled and inlined) and
write back. Keeping the rule free of memory access is what lets LLVM
vectorise the CPU loops whatever the flags are, and lets every target share
one statement of each rule.

The order of floating-point operations follows ``torch.optim``'s
single-tensor implementations (docs/update-rules.md), so float64 results
agree with torch to rounding.

Flags are booleans that are the same for every element; scalars already have
the array's dtype. ``inv_scale`` unscales the gradient first (mixed-precision
loss scaling); it is 1 when no scale is given, and ``g * 1`` is exactly ``g``.
"""

import math


def sgd(p, g, buf, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
        maximize, use_weight_decay, use_momentum, first_step, nesterov):
    """Return the new ``(p, buf)``; ``buf`` is unchanged without momentum."""
    g = g * inv_scale
    g = -g if maximize else g
    g = g + weight_decay * p if use_weight_decay else g
    if use_momentum:
        # On the first step the buffer is the gradient itself (no dampening).
        buf = g if first_step else buf * momentum + one_minus_dampening * g
        g = g + momentum * buf if nesterov else buf
    return p + neg_lr * g, buf


def adagrad(p, g, state_sum, inv_scale, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    """Return the new ``(p, state_sum)``."""
    g = g * inv_scale
    g = -g if maximize else g
    g = g + weight_decay * p if use_weight_decay else g
    state_sum = state_sum + g * g
    return p + (neg_clr * g) / (math.sqrt(state_sum) + eps), state_sum


def adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, inv_scale,
         lerp_weight, lerp_weight_complement, beta2, one_minus_beta2,
         neg_step_size, bias_correction2_sqrt, eps, weight_decay, decay_factor,
         maximize, l2_decay, amsgrad, lerp_from_end):
    """Return the new ``(p, exp_avg, exp_avg_sq, max_exp_avg_sq)``.

    ``max_exp_avg_sq`` is only meaningful when ``amsgrad`` is set.
    ``decay_factor`` is ``1 - lr * weight_decay`` with decoupled weight
    decay (AdamW), else 1: ``p * 1`` is ``p`` bit for bit, and a
    multiplication costs less than choosing per element.
    """
    g = g * inv_scale
    g = -g if maximize else g
    p = p * decay_factor
    g = g + weight_decay * p if l2_decay else g
    # exp_avg.lerp_(g, 1 - beta1) as torch's lerp computes it: the form
    # depends on whether the weight is below one half.
    diff = g - exp_avg
    exp_avg = g - diff * lerp_weight_complement if lerp_from_end else exp_avg + lerp_weight * diff
    exp_avg_sq = exp_avg_sq * beta2 + (one_minus_beta2 * g) * g
    # NaN-propagating maximum, as torch.maximum.
    if exp_avg_sq > max_exp_avg_sq or exp_avg_sq != exp_avg_sq:
        max_exp_avg_sq = exp_avg_sq
    second = max_exp_avg_sq if amsgrad else exp_avg_sq
    denom = math.sqrt(second) / bias_correction2_sqrt + eps
    return p + (neg_step_size * exp_avg) / denom, exp_avg, exp_avg_sq, max_exp_avg_sq
