"""Fused CUDA kernels: the rules of ``rules.py`` in grid-stride loops.

The same element rules as the CPU loops of ``cpu.py``, compiled by
numba-cuda as device functions, so one statement of each rule serves both
targets. Each kernel is a grid-stride loop (thread ``cuda.grid(1)`` handles
elements ``i, i + stride, ...``) that loads an element of every array, calls
the rule and stores the results: one pass over memory per step.

This module imports numba.cuda; fastopt imports it only when a CUDA array or
target is used (see ``fastopt._cuda``), so ``import fastopt`` needs neither
numba-cuda nor a GPU.

``KERNELS[name]`` are launchers with the CPU kernels' signatures: C-contiguous
1-D device arrays and scalars of the arrays' dtype, flags as bools. They
launch on the stream of the parameter array (the stream its producer
exported through ``__cuda_array_interface__``, else the default stream) and
return at once: nothing is copied and nothing waits.

Floating point: ``fastmath`` is off (IEEE division and square root, no
flush-to-zero), but NVVM contracts ``a * b + c`` into fused multiply-adds as
nvcc does by default, so results agree with the CPU kernels to rounding (a few
units in the last place; tested), not bit for bit.
"""

import numpy as np
from numba import cuda, types

from .. import config
from . import rules

_sgd = cuda.jit(device=True)(rules.sgd)
_adagrad = cuda.jit(device=True)(rules.adagrad)
_adam = cuda.jit(device=True)(rules.adam)

_KERNEL = dict(cache=True)


@cuda.jit(**_KERNEL)
def sgd(p, g, buf, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
        maximize, use_weight_decay, use_momentum, first_step, nesterov):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        b = buf[i] if use_momentum else p[i]
        p[i], b = _sgd(g[i], p[i], b, inv_scale, neg_lr, weight_decay, momentum, one_minus_dampening,
                       maximize, use_weight_decay, use_momentum, first_step, nesterov)
        if use_momentum:
            buf[i] = b


@cuda.jit(**_KERNEL)
def adagrad(p, g, state_sum, inv_scale, neg_clr, weight_decay, eps, maximize, use_weight_decay):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], state_sum[i] = _adagrad(g[i], p[i], state_sum[i], inv_scale, neg_clr, weight_decay, eps,
                                      maximize, use_weight_decay)


@cuda.jit(**_KERNEL)
def adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, inv_scale,
         lerp_weight, lerp_from_end, lerp_weight_complement,
         beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
         weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        vmax = max_exp_avg_sq[i] if amsgrad else exp_avg_sq[i]
        p[i], exp_avg[i], exp_avg_sq[i], vmax = _adam(
            g[i], p[i], exp_avg[i], exp_avg_sq[i], vmax, inv_scale,
            lerp_weight, lerp_from_end, lerp_weight_complement,
            beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps,
            weight_decay, decay_factor, maximize, l2_decay, decoupled_decay, amsgrad)
        if amsgrad:
            max_exp_avg_sq[i] = vmax


@cuda.jit(**_KERNEL)
def flag_nonfinite(g, inv_scale, found):
    """Set ``found[0]`` to 1 if any element of ``g * inv_scale`` is NaN or infinite."""
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        x = g[i] * inv_scale
        if not x - x == 0:
            found[0] = 1


@cuda.jit(**_KERNEL)
def fill(a, value):
    """Set every element of the 1-D array ``a`` to ``value`` (state initialisation)."""
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = value


# --- roofline: an optimizer's memory traffic with almost no arithmetic --------
# The GPU counterparts of roofline.py's kernels: read g, update k arrays in place.

@cuda.jit(**_KERNEL)
def roofline_1(g, s, a):
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        a[i] += g[i] * s


@cuda.jit(**_KERNEL)
def roofline_2(g, s, a, b):
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        t = g[i] * s
        a[i] += t
        b[i] += t


@cuda.jit(**_KERNEL)
def roofline_3(g, s, a, b, c):
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t


@cuda.jit(**_KERNEL)
def roofline_4(g, s, a, b, c, d):
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t
        d[i] += t


# --- launching ------------------------------------------------------------------

_auto_blocks = None


def _max_blocks():
    """``config.CUDA_MAX_BLOCKS``, or when it is 0, 32 blocks per multiprocessor
    of the current device (read once per process)."""
    global _auto_blocks
    if config.CUDA_MAX_BLOCKS:
        return config.CUDA_MAX_BLOCKS
    if _auto_blocks is None:
        sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", None)
        _auto_blocks = 32 * sms if sms else 1024  # the simulator reports no SM count
    return _auto_blocks


def launch_config(n):
    """``(blocks, threads_per_block)`` for ``n`` elements."""
    threads = config.CUDA_THREADS_PER_BLOCK
    return min(-(-n // threads), _max_blocks()), threads


def _launcher(kernel):
    def launch(first, *args):
        n = first.shape[0]
        if n:
            blocks, threads = launch_config(n)
            kernel[blocks, threads, first.stream](first, *args)
    return launch


def count_nonfinite(g, inv_scale):
    """1 if any element of ``g * inv_scale`` is NaN or infinite, else 0. The
    host needs the answer, so this one waits for the GPU (on ``g``'s stream)."""
    found = cuda.to_device(np.zeros(1, np.int32), stream=g.stream)
    _launcher(flag_nonfinite)(g, inv_scale, found)
    return int(found.copy_to_host(stream=g.stream)[0]) if g.shape[0] else 0


KERNELS = {"sgd": _launcher(sgd), "adagrad": _launcher(adagrad), "adam": _launcher(adam),
           "count_nonfinite": count_nonfinite}
ROOFLINE = {1: _launcher(roofline_1), 2: _launcher(roofline_2),
            3: _launcher(roofline_3), 4: _launcher(roofline_4)}
launch_fill = _launcher(fill)

# Argument kinds of each kernel, in order: "a" a 1-D C-contiguous array,
# "s" a scalar of the arrays' dtype, "b" a flag. ``signature`` turns them into
# numba types, to compile a kernel ahead of time (tests compile each to PTX).
ARG_KINDS = {
    "sgd": "aaa" "sssss" "bbbbb",
    "adagrad": "aaa" "ssss" "bb",
    "adam": "aaaaa" "s" "sbs" "sssss" "ss" "bbbb",
    "flag_nonfinite": "asi",
    "fill": "as",
    "roofline_1": "as" "a",
    "roofline_2": "as" "aa",
    "roofline_3": "as" "aaa",
    "roofline_4": "as" "aaaa",
}
_ALL = {"sgd": sgd, "adagrad": adagrad, "adam": adam, "flag_nonfinite": flag_nonfinite, "fill": fill,
        "roofline_1": roofline_1, "roofline_2": roofline_2,
        "roofline_3": roofline_3, "roofline_4": roofline_4}


def signature(name, dtype):
    """The argument types of kernel ``name`` for arrays of ``dtype`` (float32 or float64)."""
    scalar = types.float32 if str(dtype) == "float32" else types.float64
    kinds = {"a": types.Array(scalar, 1, "C"), "s": scalar, "b": types.boolean,
             "i": types.Array(types.int32, 1, "C")}
    return tuple(kinds[k] for k in ARG_KINDS[name])


def ptx(name, dtype, cc):
    """PTX of kernel ``name`` for ``dtype`` and compute capability ``cc`` (e.g. ``(9, 0)``).

    Needs numba-cuda's compiler libraries (NVVM), not a GPU.
    """
    text, _ = cuda.compile_ptx(_ALL[name].py_func, signature(name, dtype), cc=cc)
    return text

