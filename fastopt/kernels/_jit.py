"""How fastopt compiles its CPU loops: the options in one place, and a disk
cache that falls back to no cache when numba cannot write one."""

import warnings
from typing import Any

from numba import njit

# error_model="numpy": no division-by-zero check that would block SIMD.
# fastmath off: contraction or nnan/ninf would change results, and make them
# depend on whether an element falls in a vector body or in the tail.
RULE: dict[str, Any] = dict(error_model="numpy", fastmath=False, boundscheck=False)

_warned = False


def loop(parallel=False, reassoc=False):
    """Decorator: compile a loop with ``RULE``'s options, ``nogil`` and a disk cache.

    ``reassoc=True`` lets LLVM reorder the loop's additions (fastmath's
    ``reassoc`` flag alone: NaN and infinities keep their meaning), which a
    sum needs to be vectorised; only reductions whose order does not matter
    to their callers (a gradient's norm) ask for it.

    numba refuses ``cache=True`` at decoration time when no cache folder is
    writable (a read-only install with no writable home). Then the loop is
    compiled without a cache, once per process, and a warning says how to
    get the cache back.
    """
    options = {**RULE, "fastmath": {"reassoc"}} if reassoc else RULE

    def decorate(fn):
        try:
            return njit(parallel=parallel, cache=True, nogil=True, **options)(fn)
        except RuntimeError as e:
            if "cannot cache" not in str(e):
                raise
            _warn_no_cache()
            return njit(parallel=parallel, cache=False, nogil=True, **options)(fn)
    return decorate


def _warn_no_cache():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("fastopt: numba cannot write its cache beside the package or in the "
                      "home folder, so kernels will be compiled in every process; set "
                      "NUMBA_CACHE_DIR to a writable folder to cache them", RuntimeWarning,
                      stacklevel=3)
