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

import numpy as np
from numba import float64, njit, prange

from . import _cpu_loops, spec
from ._jit import RULE, loop

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


# The sum of squares is taken over chunks of ``_CHUNK`` elements (each a
# slice, so its loop indexes from 0 and is vectorised: an offset index can be
# negative to LLVM, which then keeps numba's wraparound), in the same order by
# both kernels: the parallel one sums chunks in parallel, then adds the
# chunks' sums in order, so both give the same bits on any number of threads
# (``target=None`` may switch between them from step to step). Called from a
# ``prange`` body, the chunk's loop keeps its own ``reassoc`` (a reduction in
# the ``prange`` loop itself would lose it, and not be vectorised).
_CHUNK = 1 << 16


@njit(**{**RULE, "fastmath": {"reassoc"}})
def _sq_sum(g, inv_scale):
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


@loop()
def sq_norm_serial(g, inv_scale):
    n = g.shape[0]
    total = 0.0
    for c in range((n + _CHUNK - 1) // _CHUNK):
        total += _sq_sum(g[c * _CHUNK:min(c * _CHUNK + _CHUNK, n)], inv_scale)
    return total


@loop(parallel=True)
def sq_norm_parallel(g, inv_scale):
    n = g.shape[0]
    chunks = (n + _CHUNK - 1) // _CHUNK
    sums = np.empty(chunks)
    for c in prange(chunks):
        sums[c] = _sq_sum(g[c * _CHUNK:min(c * _CHUNK + _CHUNK, n)], inv_scale)
    total = 0.0
    for c in range(chunks):
        total += sums[c]
    return total


@njit(**RULE)
def _max_bits(bits, mask):
    # ``mask - mask``: a zero of the bits' own width (an int64 0 would widen
    # every element, and AVX2 has no packed 64-bit maximum).
    q = bits.shape[0] // _STREAMS
    largest = mask - mask
    for i in range(q):
        for k in range(_STREAMS):
            largest = max(largest, bits[i + k * q] & mask)
    for i in range(_STREAMS * q, bits.shape[0]):
        largest = max(largest, bits[i] & mask)
    return largest


@loop()
def max_abs_bits_serial(bits, mask):
    return _max_bits(bits, mask)


@loop(parallel=True)
def max_abs_bits_parallel(bits, mask):
    n = bits.shape[0]
    chunks = (n + _CHUNK - 1) // _CHUNK
    largest = np.zeros(chunks, bits.dtype)
    for c in prange(chunks):
        largest[c] = _max_bits(bits[c * _CHUNK:min(c * _CHUNK + _CHUNK, n)], mask)
    return largest.max() if chunks else mask - mask


# A kernel declared since the loops were last generated has none yet: left
# out, so that ``python -m fastopt.kernels.spec`` (which imports the package)
# can generate them; tests/test_kernels.py fails until it has.
KERNELS = {
    **{k.name: {"serial": getattr(_cpu_loops, f"{k.name}_serial"),
                "parallel": getattr(_cpu_loops, f"{k.name}_parallel")} for k in spec.RULE_KERNELS
       if hasattr(_cpu_loops, f"{k.name}_serial")},
    "any_nonfinite": {"serial": any_nonfinite_serial, "parallel": any_nonfinite_parallel},
    "sq_norm": {"serial": sq_norm_serial, "parallel": sq_norm_parallel},
    "max_abs_bits": {"serial": max_abs_bits_serial, "parallel": max_abs_bits_parallel},
}
