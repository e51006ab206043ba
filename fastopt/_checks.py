"""Every validation of arrays and hyperparameters, in one place.

Each check raises ``TypeError`` (wrong kind of object) or ``ValueError``
(right kind, bad value) with a message that names the argument. Callers run
all their checks before the first write, so a rejected call changes nothing.
"""

import math
import numbers
import sys
from typing import Any

import numpy as np

from . import _cuda
from ._state_dtype import is_bfloat16
from ._targets import TARGETS

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _type_name(x):
    return type(x).__name__


def check_target(target):
    """None or one of ``TARGETS``, returned as a plain str (an array of one
    such name compares equal to it, and is refused)."""
    if target is None:
        return None
    if not isinstance(target, str):
        raise TypeError(f"target must be None or one of {TARGETS}, got {_type_name(target)}")
    if target not in TARGETS:
        raise ValueError(f"target must be None or one of {TARGETS}, got {target!r}")
    return str(target)


def check_flag(name, value):
    if value is not True and value is not False and not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)}")
    return bool(value)


def check_real(name, value, *, low=None, high=None, high_open=False):
    """A finite real number with ``low <= value`` and ``value <= high``
    (``value < high`` when ``high_open``); returned as a Python float."""
    if type(value) is not float and type(value) is not int:  # fast path first: step() runs this
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int or Fraction beyond the float range
        raise ValueError(f"{name} must be finite, got a number too large for a float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_betas(betas):
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (check_real("betas[0]", beta1, low=0.0, high=1.0, high_open=True),
            check_real("betas[1]", beta2, low=0.0, high=1.0, high_open=True))


def check_grad_scale(grad_scale, dtypes=()):
    """``grad_scale`` (None or a finite number > 0); returns ``1 / grad_scale``.

    ``dtypes`` may be a generator: it is read only when a scale is given.

    The gradient is multiplied by the reciprocal, cast to the arrays' dtype:
    it must be a normal number in each of ``dtypes`` (not infinite, not zero
    or subnormal), or unscaling would turn gradients into NaN or zero.
    """
    if grad_scale is None:
        return 1.0
    scale = check_real("grad_scale", grad_scale)
    if scale <= 0:
        raise ValueError(f"grad_scale must be > 0, got {scale}")
    inv = 1.0 / scale
    for dtype in set(dtypes):
        info = np.finfo(dtype)
        if not float(info.tiny) <= inv <= float(info.max):
            raise ValueError(f"grad_scale={scale:g} is out of range for {np.dtype(dtype)} arrays: "
                             f"its reciprocal must be a normal {np.dtype(dtype)} number, so "
                             f"grad_scale must lie between {1 / info.max:.3g} and {1 / info.tiny:.3g}")
    return inv


def check_clip(max_grad_norm, norm_type):
    """``(max_grad_norm, norm_type)`` as floats, or None without clipping.

    ``max_grad_norm``: None or a finite number >= 0; ``norm_type``: 2 or
    infinity (a number, or the string "inf" as torch takes it).
    """
    if norm_type == "inf":
        norm_type = math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be 2 or math.inf, got {_type_name(norm_type)}")
    if float(norm_type) not in (2.0, math.inf):
        raise ValueError(f"norm_type must be 2 or math.inf, got {norm_type}")
    if max_grad_norm is None:
        return None
    return check_real("max_grad_norm", max_grad_norm, low=0.0), float(norm_type)


# Step counts stay below this: the bias corrections take them as floats.
STEP_LIMIT = 2**1023


def check_step(step):
    if type(step) is not int:  # fast path first: the functional API runs this at every step
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {_type_name(step)}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count after this step), got {step}")
    if step >= STEP_LIMIT:
        raise ValueError("step must be below 2**1023, got a number too large for a float")
    return int(step)


def check_target_matches(target, p, pname):
    """``target`` fits parameter ``p``: "cuda" only for GPU arrays, "serial" and
    "parallel" only for NumPy arrays. Returns ``target``."""
    if isinstance(p, np.ndarray):
        if target == "cuda":
            raise TypeError(f"target='cuda' needs GPU arrays, but {pname} is a numpy.ndarray "
                            "(move it with numba.cuda.to_device, cupy.asarray or torch's .cuda())")
    elif target is not None and target != "cuda":
        raise ValueError(f"target={target!r} runs on the CPU, but {pname} is a GPU array; "
                         "use target=None or 'cuda'")
    return target


def _base_ndarray(a):
    """``a`` as a plain ``numpy.ndarray`` viewing the same memory: subclasses
    (``np.matrix``, masked arrays, memmaps) change what ``ravel`` and
    indexing return, and the kernels take plain arrays only."""
    return a if type(a) is np.ndarray else a.view(np.ndarray)


def check_seed(name, value):
    """A seed: an integer (not a bool) in [0, 2**32), returned as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value < 2**32:
        raise ValueError(f"{name} must be in [0, 2**32), got {value}")
    return int(value)


def check_param(name, p, bfloat16=False):
    """A parameter: a writeable, C-contiguous float32 or float64 array (or,
    with ``bfloat16``, an ml_dtypes bfloat16 array on the host).

    A NumPy array is returned as a plain ``numpy.ndarray`` over the same
    memory (subclasses such as ``np.matrix`` viewed as one); a GPU array as a
    numba device array viewing it (see ``_cuda.as_array``).
    """
    if not isinstance(p, np.ndarray):
        if not _cuda.is_cuda_array(p):
            raise TypeError(f"{name} must be a numpy.ndarray or a GPU array (numba, CuPy, PyTorch), "
                            f"got {_type_name(p)}")
        p = _cuda.as_array(name, p)
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {p.dtype}")
        if not p.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous (updating a copy would lose the update)")
        return p
    if p.dtype not in FLOAT_DTYPES and not (bfloat16 and is_bfloat16(p) and p.dtype.isnative):
        allowed = "float32, float64 or bfloat16" if bfloat16 else "float32 or float64"
        raise TypeError(f"{name} must have dtype {allowed}, got {_dtype_name(p)}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (updating a copy would lose the update); "
                         "pass numpy.ascontiguousarray(...) and use that array")
    if not p.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return _base_ndarray(p)


def check_state(name, a, p, pname):
    """A state array of parameter ``p``: same place, shape and dtype, writeable, C-contiguous.

    Returned as ``check_param`` returns arrays.
    """
    if isinstance(p, np.ndarray):
        if not isinstance(a, np.ndarray):
            _refuse_other_kind(name, a, pname, "a numpy.ndarray")
        _check_matches(name, a, p, pname)
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if not a.flags.writeable:
            raise ValueError(f"{name} is read-only")
        return _base_ndarray(a)
    a = _device_array(name, a, pname)
    _check_matches(name, a, p, pname)
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    return a


def check_grad(name, g, p, pname):
    """A gradient of ``p``, in the same place; returned C-contiguous.

    A non-contiguous NumPy gradient is copied; a GPU gradient must be
    C-contiguous already (fastopt makes no copies on the GPU). A NumPy scalar
    of the parameter's dtype (what ``.sum()`` returns) serves as the gradient
    of a 0-d parameter.
    """
    if isinstance(p, np.ndarray):
        if isinstance(g, np.generic) and p.ndim == 0:
            g = np.asarray(g)
        if not isinstance(g, np.ndarray):
            _refuse_other_kind(name, g, pname, "a numpy.ndarray")
        _check_matches(name, g, p, pname)
        if not g.flags.c_contiguous:
            g = np.ascontiguousarray(g)
        return g if type(g) is np.ndarray else g.view(np.ndarray)
    g = _device_array(name, g, pname)
    _check_matches(name, g, p, pname)
    if not g.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the GPU (fastopt copies nothing there); "
                         "pass a contiguous copy (torch: .contiguous(), CuPy: cupy.ascontiguousarray)")
    return g


def _device_array(name, a, pname):
    """GPU array ``a`` belonging with GPU parameter ``pname``, as a numba device array."""
    if isinstance(a, np.ndarray) or not _cuda.is_cuda_array(a):
        _refuse_other_kind(name, a, pname, "a GPU array")
    return _cuda.as_array(name, a)


def _refuse_other_kind(name, a, pname, wanted):
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name} is a numpy.ndarray (host memory), but {pname} is a GPU array; "
                        "the arrays of one update must all be on the host or all on the GPU")
    if _cuda.is_cuda_array(a):
        raise TypeError(f"{name} is a GPU array, but {pname} is a numpy.ndarray (host memory); "
                        "the arrays of one update must all be on the host or all on the GPU")
    raise TypeError(f"{name} must be {wanted} like {pname}, got {_type_name(a)}")


def _dtype_name(a):
    """``a``'s dtype as a message names it (bfloat16 by name, a byte-swapped one said so)."""
    if is_bfloat16(a):
        return "bfloat16" if a.dtype.isnative else "bfloat16 in non-native byte order"
    return str(a.dtype)


def _check_matches(name, a, p, pname):
    if a.dtype != p.dtype:
        raise TypeError(f"{name} has dtype {_dtype_name(a)}, but {pname} has dtype "
                        f"{_dtype_name(p)}")
    if a.shape != p.shape:
        raise ValueError(f"{name} has shape {a.shape}, but {pname} has shape {p.shape}")


def check_no_overlap(named_arrays):
    """Refuse arrays whose memory overlaps: the kernels assume none does.

    ``named_arrays`` is a sequence of ``(name, array)``: C-contiguous, all
    NumPy arrays or all numba device arrays (as the checks above return them).
    """
    host = all(isinstance(a, np.ndarray) for _, a in named_arrays)
    if host and len(named_arrays) <= 8:
        # Bounds of C-contiguous arrays: exact, and for a few arrays cheaper
        # than reading each address.
        for k, (name, a) in enumerate(named_arrays):
            for other, b in named_arrays[k + 1:]:
                if np.may_share_memory(a, b):
                    raise ValueError(f"{name} and {other} share memory; every array must be distinct")
        return
    # Many arrays (a model's parameters): their byte ranges sorted by start,
    # each compared with the next (an overlap anywhere makes two neighbours
    # overlap), not every pair (which took most of a minute at 800 arrays).
    spans = []
    for name, a in named_arrays:
        if a.nbytes:
            start = a.__array_interface__["data"][0] if host else _cuda.address(a)
            spans.append((start, start + a.nbytes, name))
    spans.sort(key=lambda span: span[0])
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"{name} and {other} share memory; every array must be distinct")


def caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside fastopt."""
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("fastopt"):
        frame, level = frame.f_back, level + 1
    return level
