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
from numba import cuda

from .. import config
from . import spec
from ._cuda_loops import adagrad, adam, sgd

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


def any_nonfinite(grads, inv_scales):
    """Whether any element of any ``grads[k] * inv_scales[k]`` is NaN or infinite.

    One device flag for all the gradients, one launch per gradient (on its
    stream), one copy back: the host needs the answer, so this waits once.
    """
    grads = [g for g in grads if g.shape[0]]
    if not grads:
        return False
    stream = grads[0].stream
    found = cuda.to_device(np.zeros(1, np.int32), stream=stream)
    launch = _launcher(any_nonfinite_cuda)
    for g, inv_scale in zip(grads, inv_scales):
        launch(g, inv_scale, found)
    if any(_handle(g.stream) != _handle(stream) for g in grads):
        cuda.synchronize()  # launched on several streams: wait for them all
    return bool(found.copy_to_host(stream=stream)[0])


def _handle(stream):
    handle = getattr(stream, "handle", None)
    return getattr(handle, "value", handle)


KERNELS = {"sgd": _launcher(sgd), "adagrad": _launcher(adagrad), "adam": _launcher(adam)}
ROOFLINE = {1: _launcher(roofline_1), 2: _launcher(roofline_2),
            3: _launcher(roofline_3), 4: _launcher(roofline_4)}
launch_fill = _launcher(fill)

# Every kernel, by its name in ``spec.KERNELS``.
ALL = {"sgd": sgd, "adagrad": adagrad, "adam": adam, "any_nonfinite_cuda": any_nonfinite_cuda,
       "fill": fill, "roofline_1": roofline_1, "roofline_2": roofline_2,
       "roofline_3": roofline_3, "roofline_4": roofline_4}


def ptx(name, dtype, cc):
    """PTX of kernel ``name`` for ``dtype`` and compute capability ``cc`` (e.g. ``(9, 0)``).

    Needs numba-cuda's compiler libraries (NVVM), not a GPU.
    """
    text, _ = cuda.compile_ptx(ALL[name].py_func, spec.signature(name, dtype), cc=cc)
    return text
