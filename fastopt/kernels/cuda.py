"""Fused CUDA kernels: the rules of ``rules.py`` in grid-stride loops.

The same element rules as the CPU loops of ``cpu.py``, compiled by
numba-cuda as device functions, so one statement of each rule serves both
targets; the rule kernels are generated from ``spec.py`` into
``_cuda_loops.py``, the others are here. Each kernel is a grid-stride loop
(thread ``cuda.grid(1)`` handles elements ``i, i + stride, ...``) that loads
an element of every array, calls the rule and stores the results: one pass
over memory per step.

This module imports numba.cuda; fastopt imports it only when a CUDA array or
target is used (see ``fastopt._cuda``), so ``import fastopt`` needs neither
numba-cuda nor a GPU.

``ALL[name]`` is every kernel by its name in ``spec.KERNELS``; launching
them (grid size, stream) is host-side work, done in ``fastopt._cuda``.

Floating point: ``fastmath`` is off (IEEE division and square root, no
flush-to-zero), but NVVM contracts ``a * b + c`` into fused multiply-adds as
nvcc does by default, so results agree with the CPU kernels to rounding (a few
units in the last place; tested), not bit for bit.
"""

from .._cuda import check_numpy_supported

check_numpy_supported()  # before numba-cuda compiles anything (its own error is obscure)

from numba import cuda, float64, int64  # noqa: E402

from . import _cuda_loops, spec

_KERNEL = dict(cache=True)


@cuda.jit(**_KERNEL)
def any_nonfinite_cuda(g, inv_scale, found):
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


# --- a gradient's norm: per-thread partials, a tree in shared memory, one atomic per block ---

_BLOCK_MAX = 1024  # the most threads a block may have: the shared partials' size


@cuda.jit(**_KERNEL)
def sq_norm_cuda(g, inv_scale, total):
    """Add the sum of the squares of ``g * inv_scale`` (in float64) to ``total[0]``."""
    acc = 0.0
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        x = float64(g[i] * inv_scale)
        acc += x * x
    partial = cuda.shared.array(_BLOCK_MAX, float64)
    t, n = cuda.threadIdx.x, cuda.blockDim.x
    partial[t] = acc
    cuda.syncthreads()
    step = 1
    while step < n:
        if t % (2 * step) == 0 and t + step < n:
            partial[t] += partial[t + step]
        step *= 2
        cuda.syncthreads()
    if t == 0:
        cuda.atomic.add(total, 0, partial[0])


@cuda.jit(**_KERNEL)
def max_abs_bits_cuda(bits, mask, largest):
    """Raise ``largest[0]`` to the largest ``bits[i] & mask`` (see ``spec.py``)."""
    acc = int64(0)
    for i in range(cuda.grid(1), bits.shape[0], cuda.gridsize(1)):
        acc = max(acc, int64(bits[i] & mask))
    partial = cuda.shared.array(_BLOCK_MAX, int64)
    t, n = cuda.threadIdx.x, cuda.blockDim.x
    partial[t] = acc
    cuda.syncthreads()
    step = 1
    while step < n:
        if t % (2 * step) == 0 and t + step < n:
            partial[t] = max(partial[t], partial[t + step])
        step *= 2
        cuda.syncthreads()
    if t == 0:
        cuda.atomic.max(largest, 0, partial[0])


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


# Every kernel, by its name in ``spec.KERNELS``.
ALL = {**{k.name: getattr(_cuda_loops, k.name) for k in spec.RULE_KERNELS
          if hasattr(_cuda_loops, k.name)},  # (not yet generated: see cpu.KERNELS)
       "any_nonfinite_cuda": any_nonfinite_cuda,
       "sq_norm_cuda": sq_norm_cuda, "max_abs_bits_cuda": max_abs_bits_cuda,
       "fill": fill, "roofline_1": roofline_1, "roofline_2": roofline_2,
       "roofline_3": roofline_3, "roofline_4": roofline_4}


def ptx(name, dtype, cc):
    """PTX of kernel ``name`` for ``dtype`` and compute capability ``cc`` (e.g. ``(9, 0)``).

    Needs numba-cuda's compiler libraries (NVVM), not a GPU.
    """
    text, _ = cuda.compile_ptx(ALL[name].py_func, spec.signature(name, dtype), cc=cc)
    return text
