"""Fused CPU loops: one pass over memory per optimizer step.

Each rule kernel of ``spec.py`` has a serial and a parallel (``prange``) loop
around its element rule of ``rules.py``, generated into ``_cpu_loops.py``.
Flags are booleans that do not change inside the loop; LLVM hoists the
branches out, so each flag combination runs as its own vectorised loop
(checked for several CPUs by ``tests/test_kernels.py``).

Arrays are C-contiguous 1-D views and scalars have the arrays' dtype. State
arrays a flag switches off (the momentum buffer without momentum,
``max_exp_avg_sq`` without amsgrad) may be empty: they are never touched.

Serial and parallel loops are separate Python functions, not one function
jitted twice, so each has its own entry in numba's on-disk cache.
"""

from numba import float64, prange

from . import _cpu_loops, spec
from ._jit import loop

# The number of gradient elements that are NaN or infinite once unscaled
# (x - x is 0 exactly for every finite x, NaN for inf and NaN).


@loop()
def any_nonfinite_serial(g, inv_scale):
    n = 0
    for i in range(g.shape[0]):
        x = g[i] * inv_scale
        n += 0 if x - x == 0 else 1
    return n


@loop(parallel=True)
def any_nonfinite_parallel(g, inv_scale):
    n = 0
    for i in prange(g.shape[0]):
        x = g[i] * inv_scale
        n += 0 if x - x == 0 else 1
    return n


# A gradient's norm (see ``spec.py``): the sum of squares in float64, its
# additions reordered (``reassoc``) so that the loop is vectorised; the largest
# |g| as the largest sign-masked integer view (an integer max vectorises, and
# a NaN, whose bits lie above infinity's, is not lost). Each loop reads four
# streams a quarter of the array apart: a lone read stream leaves a core
# waiting on memory, four keep more reads in flight (a third faster, measured
# on Zen 3), and the pass costs about a plain read of the gradient.
_STREAMS = 4


@loop(reassoc=True)
def sq_norm_serial(g, inv_scale):
    q = g.shape[0] // _STREAMS
    total = 0.0
    for i in range(q):
        for k in range(_STREAMS):
            x = float64(g[i + k * q] * inv_scale)
            total += x * x
    for i in range(_STREAMS * q, g.shape[0]):
        x = float64(g[i] * inv_scale)
        total += x * x
    return total


@loop(parallel=True, reassoc=True)
def sq_norm_parallel(g, inv_scale):
    q = g.shape[0] // _STREAMS
    total = 0.0
    for i in prange(q):
        for k in range(_STREAMS):
            x = float64(g[i + k * q] * inv_scale)
            total += x * x
    for i in range(_STREAMS * q, g.shape[0]):
        x = float64(g[i] * inv_scale)
        total += x * x
    return total


@loop()
def max_abs_bits_serial(bits, mask):
    q = bits.shape[0] // _STREAMS
    largest = 0
    for i in range(q):
        for k in range(_STREAMS):
            largest = max(largest, bits[i + k * q] & mask)
    for i in range(_STREAMS * q, bits.shape[0]):
        largest = max(largest, bits[i] & mask)
    return largest


@loop(parallel=True)
def max_abs_bits_parallel(bits, mask):
    q = bits.shape[0] // _STREAMS
    largest = 0
    for i in prange(q):
        for k in range(_STREAMS):
            largest = max(largest, bits[i + k * q] & mask)
    for i in range(_STREAMS * q, bits.shape[0]):
        largest = max(largest, bits[i] & mask)
    return largest


KERNELS = {
    **{k.name: {"serial": getattr(_cpu_loops, f"{k.name}_serial"),
                "parallel": getattr(_cpu_loops, f"{k.name}_parallel")} for k in spec.RULE_KERNELS},
    "any_nonfinite": {"serial": any_nonfinite_serial, "parallel": any_nonfinite_parallel},
    "sq_norm": {"serial": sq_norm_serial, "parallel": sq_norm_parallel},
    "max_abs_bits": {"serial": max_abs_bits_serial, "parallel": max_abs_bits_parallel},
}
