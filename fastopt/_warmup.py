"""Compile every kernel for every dtype and target, filling numba's disk cache.

Run it once (``python -m fastopt warmup``) before starting many processes:
they then load compiled code instead of each compiling (and writing the cache
at the same time, which numba does not guard against).
"""

import numpy as np

from .kernels.cpu import KERNELS
from .kernels.roofline import _KERNELS as ROOFLINE


def warmup():
    """Compile (or load from cache) every CPU kernel; return how many there are."""
    count = 0
    for dtype in (np.float32, np.float64):
        T = np.dtype(dtype).type
        a = [np.zeros(2, dtype) for _ in range(5)]
        s = T(0)
        for target in ("serial", "parallel"):
            KERNELS["sgd"][target](a[0], a[1], a[2], s, s, s, s, s, False, False, True, False, False)
            KERNELS["adagrad"][target](a[0], a[1], a[2], s, s, s, s, False, False)
            KERNELS["adam"][target](a[0], a[1], a[2], a[3], a[4], s, s, False, s, s, s, s, s, s,
                                    s, s, False, False, False, True)
            KERNELS["count_nonfinite"][target](a[0], s)
            count += 4
        for updated, kernels in ROOFLINE.items():
            for k in kernels:
                k(a[0], s, *a[1:1 + updated])
                count += 1
    return count
