"""The one place that chooses which compiled kernel runs."""

from . import config
from .kernels.cpu import KERNELS

TARGETS = ("serial", "parallel")


def kernel(name, target, size):
    """The ``name`` kernel ("sgd", "adagrad", "adam") for ``target``.

    ``target`` is None (choose by ``size`` against
    ``config.PARALLEL_THRESHOLD``), "serial" or "parallel"; callers have
    validated it with ``_checks.check_target``.
    """
    if target is None:
        target = "parallel" if size >= config.PARALLEL_THRESHOLD else "serial"
    return KERNELS[name][target]
