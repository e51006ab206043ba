"""The one place that chooses where work runs: which compiled kernel, and
where new arrays are allocated (host or GPU, like the parameter)."""

import numpy as np

from . import config
from .kernels.cpu import KERNELS

TARGETS = ("serial", "parallel", "cuda")


def kernel(name, target, p):
    """The ``name`` kernel ("sgd", "adagrad", "adam") to update parameter ``p``.

    ``target`` is None (a GPU array takes the CUDA kernel; a NumPy array the
    serial or parallel one by its size against ``config.PARALLEL_THRESHOLD``),
    "serial", "parallel" or "cuda"; callers have validated it against ``p``
    with ``_checks.check_target_matches``.
    """
    if target is None:
        if isinstance(p, np.ndarray):
            return KERNELS[name]["parallel" if p.size >= config.PARALLEL_THRESHOLD else "serial"]
        target = "cuda"
    if target == "cuda":
        from . import _cuda
        return _cuda.kernels().KERNELS[name]
    return KERNELS[name][target]


def new(shape, dtype, device, value=None):
    """A new array on ``device`` ("cpu" or "cuda"), filled with ``value``
    (uninitialised when it is None)."""
    if device == "cpu":
        if value is None:
            return np.empty(shape, dtype)
        return np.zeros(shape, dtype) if value == 0 else np.full(shape, value, dtype)
    from . import _cuda
    return _cuda.new(shape, dtype, value)


def fill(a, value):
    """Set every element of ``a`` (a NumPy array or a numba device array) to ``value``."""
    if isinstance(a, np.ndarray):
        a.fill(value)
    else:
        from . import _cuda
        _cuda.fill(a, value)


def new_like(p, value=None):
    """A new array with the shape and dtype of parameter ``p``, where ``p`` lives,
    filled with ``value`` (uninitialised when it is None).

    ``p`` is a NumPy array or a numba device array (as the checks return it).
    """
    if isinstance(p, np.ndarray):
        if value is None:
            return np.empty_like(p)
        return np.zeros_like(p) if value == 0 else np.full_like(p, value)
    from . import _cuda
    return _cuda.new(p.shape, p.dtype, value, p.stream)


def host_array(a):
    """``a`` as a NumPy array: GPU arrays are copied to the host, anything else ``np.asarray``."""
    if isinstance(a, np.ndarray):
        return a
    from . import _cuda
    if _cuda.is_cuda_array(a):
        return _cuda.to_host(a)
    return np.asarray(a)


def place_like(p, a):
    """NumPy array ``a`` where parameter ``p`` lives: ``a`` itself, or a copy on
    the GPU (made on ``p``'s stream, before the kernels that will use it)."""
    if isinstance(p, np.ndarray):
        return a
    from . import _cuda
    return _cuda.to_device(a, p.stream)
