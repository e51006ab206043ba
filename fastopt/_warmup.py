"""Compile every CPU kernel for every dtype and target, filling numba's disk cache.

Run it once (``python -m fastopt warmup``) before starting many processes:
they then load compiled code instead of each compiling (and writing the cache
at the same time, which numba does not guard against).
"""

from .kernels.cpu import KERNELS
from .kernels.roofline import _KERNELS as ROOFLINE
from .kernels.spec import KERNELS as KERNELS_DECLARED
from .kernels.spec import signature


def cpu_loops():
    """``(spec name, loop)`` for every CPU loop: the optimizer kernels, then the rooflines."""
    for name, targets in KERNELS.items():
        for loop in targets.values():
            yield name, loop
    for updated, loops in ROOFLINE.items():
        for loop in loops:
            yield f"roofline_{updated}", loop


def warmup():
    """Compile (or load from cache) every CPU kernel; return how many there are."""
    count = 0
    for dtype in ("float32", "float64"):
        for name, loop in cpu_loops():
            if dtype in dtypes(name):
                loop.compile(signature(name, dtype))
                count += 1
    return count


def dtypes(name):
    """The parameter dtypes kernel ``name`` is compiled for (reduced-precision
    state kernels: float32 only)."""
    kernel = KERNELS_DECLARED.get(name)
    return kernel.dtypes if kernel is not None else ("float32", "float64")
