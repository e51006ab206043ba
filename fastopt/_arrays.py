"""Arrays where the parameters live: NumPy on the host, numba device arrays
on the GPU. Allocation, filling and copies in one place, host side; the
GPU half is in ``_cuda`` (imported only when a GPU array is met)."""

import numpy as np


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


def new_like(p, value=None, dtype=None):
    """A new array with the shape and dtype (or ``dtype``) of parameter ``p``,
    where ``p`` lives, filled with ``value`` (uninitialised when it is None).

    ``p`` is a NumPy array or a numba device array (as the checks return it).
    """
    dtype = p.dtype if dtype is None else dtype
    if isinstance(p, np.ndarray):
        return new(p.shape, dtype, "cpu", value)
    from . import _cuda
    return _cuda.new(p.shape, dtype, value, p.stream)


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
