"""Trivial in-place kernels with an optimizer's memory traffic: the speed limit.

A fused optimizer step reads the gradient and ``k`` arrays (parameter and
state) and writes those ``k`` arrays back. ``roofline(k, target)`` returns a
kernel with exactly that traffic and almost no arithmetic, so its time is
what the memory system allows (see docs/measuring.md). Not a STREAM triad: its
written array is not read first, which changes the byte count.
"""

from numba import prange

from ._jit import loop


@loop()
def _one_serial(g, s, a):
    for i in range(g.shape[0]):
        a[i] += g[i] * s


@loop(parallel=True)
def _one_parallel(g, s, a):
    for i in prange(g.shape[0]):
        a[i] += g[i] * s


@loop()
def _two_serial(g, s, a, b):
    for i in range(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t


@loop(parallel=True)
def _two_parallel(g, s, a, b):
    for i in prange(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t


@loop()
def _three_serial(g, s, a, b, c):
    for i in range(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t


@loop(parallel=True)
def _three_parallel(g, s, a, b, c):
    for i in prange(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t


@loop()
def _four_serial(g, s, a, b, c, d):
    for i in range(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t
        d[i] += t


@loop(parallel=True)
def _four_parallel(g, s, a, b, c, d):
    for i in prange(g.shape[0]):
        t = g[i] * s
        a[i] += t
        b[i] += t
        c[i] += t
        d[i] += t


_KERNELS = {
    1: (_one_serial, _one_parallel),
    2: (_two_serial, _two_parallel),
    3: (_three_serial, _three_parallel),
    4: (_four_serial, _four_parallel),
}


def roofline(updated, target):
    """The kernel ``f(g, s, *arrays)`` that reads ``g`` and updates ``updated`` arrays."""
    serial, parallel = _KERNELS[updated]
    return parallel if target == "parallel" else serial
