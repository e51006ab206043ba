"""The one place that chooses which compiled kernel runs."""

import threading
import warnings

from . import config
from .kernels.cpu import KERNELS

TARGETS = ("serial", "parallel")

# numba's "workqueue" threading layer aborts the process when two threads run
# parallel code at once. Until the first parallel kernel has run, the layer
# is unknown; after it, ``_layer_is_safe`` says whether parallel kernels may
# run concurrently (omp and tbb: yes).
_layer_is_safe = None
_parallel_lock = threading.Lock()


def kernel(name, target, size):
    """The ``name`` kernel ("sgd", "adagrad", "adam") for ``target``.

    ``target`` is None (choose by ``size`` against
    ``config.PARALLEL_THRESHOLD``), "serial" or "parallel"; callers have
    validated it with ``_checks.check_target``.
    """
    if target is None:
        target = "parallel" if size >= config.PARALLEL_THRESHOLD else "serial"
    if target == "parallel" and _layer_is_safe is not True:
        return lambda *args: _guarded_parallel(name, args)
    return KERNELS[name][target]


def _guarded_parallel(name, args):
    """Run the parallel kernel if no other thread is in one, else the serial
    kernel (bit-identical results), until the threading layer is known safe."""
    global _layer_is_safe
    if not _parallel_lock.acquire(blocking=False):
        return KERNELS[name]["serial"](*args)
    try:
        result = KERNELS[name]["parallel"](*args)
        if _layer_is_safe is None:
            import numba
            _layer_is_safe = numba.threading_layer() != "workqueue"
            if not _layer_is_safe:
                warnings.warn("numba's workqueue threading layer is not thread-safe: fastopt runs "
                              "one parallel step at a time, and steps that other threads take "
                              "meanwhile use the serial kernel (same results). Install tbb, or "
                              "use the omp layer, for concurrent parallel steps.",
                              RuntimeWarning, stacklevel=4)
    finally:
        _parallel_lock.release()
    return result
