"""Host-side support for GPU arrays: recognising, viewing, allocating, copying.

GPU arrays are numba's device arrays (also the CUDA simulator's) and any
object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
tensors, ...). Such objects are viewed, without copying, as numba device
arrays: the kernels and every check work on those views.

numba.cuda is imported on first use, never by ``import fastopt``; without
numba-cuda, or without a usable GPU, asking for CUDA raises an error that
says what is missing.
"""

import importlib

import numpy as np

from . import config

INSTALL = 'pip install "fastopt[cuda]"'

_numba_cuda = None


def cuda():
    """The ``numba.cuda`` module, imported (and the GPU checked for) on first use.

    Raises ImportError when numba-cuda is not installed and RuntimeError when
    it finds no usable GPU and driver.
    """
    global _numba_cuda
    if _numba_cuda is None:
        try:
            import numba_cuda  # noqa: F401  (NVIDIA's CUDA target; numba's own is deprecated)
        except ImportError:
            raise ImportError("the CUDA target needs numba-cuda and the CUDA compiler libraries, "
                              f"which are not installed: {INSTALL}") from None
        check_numpy_supported()
        from numba import cuda as module
        if not module.is_available():
            raise RuntimeError("the CUDA target needs an NVIDIA GPU and its driver, and numba-cuda "
                               "finds none usable (python -c 'from numba import cuda; "
                               "cuda.detect()' says why)")
        _numba_cuda = module
    return _numba_cuda


def check_numpy_supported():
    """Raise ImportError, naming the versions, when the installed numba-cuda
    cannot compile with the installed NumPy. numba-cuda 0.30.x registers
    ``numpy.row_stack``, which NumPy 2.5 removed: without this check its
    first compilation fails deep inside with an AttributeError."""
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    except AttributeError as e:
        if "row_stack" not in str(e):
            raise
        from importlib.metadata import version
        raise ImportError(f"numba-cuda {version('numba-cuda')} does not work with NumPy "
                          f"{np.__version__} (it uses numpy.row_stack, which NumPy 2.5 removed): "
                          "pip install 'numpy<2.5' (the cuda extra asks for it)") from None
    except ImportError:
        pass  # the CUDA simulator has no such module, and compiles nothing


def kernels():
    """The module of CUDA kernels, compiled on first use."""
    cuda()
    from .kernels import cuda as module
    return module


def is_cuda_array(a):
    """Whether ``a`` is a GPU array (a numba device array or an object with the interface)."""
    if getattr(a, "__cuda_ndarray__", False):
        return True
    try:
        return getattr(a, "__cuda_array_interface__", None) is not None
    except Exception:
        # PyTorch refuses the interface of a tensor that requires grad (RuntimeError):
        # it is a GPU array all the same, and as_array says what to do.
        return True


def as_array(name, a):
    """``a`` as a numba device array: ``a`` itself if it is one, else a zero-copy view.

    The view keeps the stream the producer exported (the kernels launch on it,
    after the producer's pending work) and does not synchronise.
    """
    if getattr(a, "__cuda_ndarray__", False):
        return a
    try:
        desc = a.__cuda_array_interface__
    except Exception as e:
        raise TypeError(f"{name} does not give its __cuda_array_interface__: {e}") from None
    if desc.get("mask") is not None:
        raise TypeError(f"{name} is a masked array; pass one without a mask")
    if desc["data"][1]:
        raise ValueError(f"{name} is read-only")
    return cuda().from_cuda_array_interface(desc, owner=a, sync=False)


def address(a):
    """The device address of numba device array ``a``'s first element."""
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:  # the simulator's arrays are host arrays in disguise
        iface = a.__array_interface__
    return iface["data"][0]


# A parameter's state is filled (or copied in) on the parameter's stream, so
# that it is ready before the kernels that then use it, whatever the stream;
# the arrays themselves stay bound to the default stream, keeping no
# reference to a stream that another library may destroy.

def new(shape, dtype, value=None, stream=0):
    """A new device array; uninitialised when ``value`` is None, else filled
    with it by a kernel on ``stream``."""
    a = cuda().device_array(shape, dtype)
    if value is not None:
        fill(a, value, stream)
    return a


def fill(a, value, stream=0):
    """Set every element of numba device array ``a`` to ``value`` with a kernel
    on ``stream`` (launched, not waited for)."""
    launcher("fill")(a.ravel().bind(stream), a.dtype.type(value))


def to_host(a):
    """A NumPy copy of GPU array ``a``, once the GPU has finished its work."""
    cuda().synchronize()
    return as_array("array", a).bind(0).copy_to_host()


def to_device(a, stream=0):
    """A device copy of NumPy array ``a``, copied on ``stream``."""
    return cuda().to_device(a, stream=stream).bind(0)


# --- launching ---------------------------------------------------------------------
# Kernels take C-contiguous 1-D device arrays and scalars of the arrays' dtype,
# flags as bools, as the CPU kernels do. A launch goes on the stream of its
# first array (the stream its producer exported through
# ``__cuda_array_interface__``, else the default stream) and returns at once:
# nothing is copied and nothing waits.

_auto_blocks = None


def _max_blocks():
    """``config.CUDA_MAX_BLOCKS``, or when it is 0, 32 blocks per multiprocessor
    of the current device (read once per process)."""
    global _auto_blocks
    if config.CUDA_MAX_BLOCKS:
        return config.CUDA_MAX_BLOCKS
    if _auto_blocks is None:
        sms = getattr(cuda().get_current_device(), "MULTIPROCESSOR_COUNT", None)
        _auto_blocks = 32 * sms if sms else 1024  # the simulator reports no SM count
    return _auto_blocks


def launch_config(n):
    """``(blocks, threads_per_block)`` for ``n`` elements."""
    threads = config.CUDA_THREADS_PER_BLOCK
    return min(-(-n // threads), _max_blocks()), threads


_launchers: dict = {}


def launcher(name):
    """A function that launches kernel ``name`` (a key of ``kernels().ALL``)
    over the elements of its first argument, on that array's stream."""
    launch = _launchers.get(name)
    if launch is None:
        all_kernels = kernels().ALL

        def launch(first, *args):
            n = first.shape[0]
            if n:
                blocks, threads = launch_config(n)
                all_kernels[name][blocks, threads, first.stream](first, *args)
        launch = _launchers[name] = launch
    return launch


def any_nonfinite(grads, inv_scales):
    """Whether any element of any ``grads[k] * inv_scales[k]`` is NaN or infinite.

    One device flag for all the gradients, one launch per gradient (on its
    stream), one copy back: the host needs the answer, so this waits once.
    """
    pairs = [(g, s) for g, s in zip(grads, inv_scales) if g.shape[0]]  # (each with its scale)
    if not pairs:
        return False
    stream = pairs[0][0].stream
    found = cuda().to_device(np.zeros(1, np.int32), stream=stream)
    several = _zeroed_before_others(stream, [g for g, _ in pairs])
    launch = launcher("any_nonfinite_cuda")
    for g, inv_scale in pairs:
        launch(g, inv_scale, found)
    if several:
        cuda().synchronize()  # launched on several streams: wait for them all
    return bool(found.copy_to_host(stream=stream)[0])


def _zeroed_before_others(stream, grads):
    """Whether ``grads`` are on several streams; if so, wait here until
    ``stream`` (where the accumulator was just zeroed) is done, so that no
    kernel on another stream writes the accumulator before it is zeroed."""
    several = any(_handle(g.stream) != _handle(stream) for g in grads)
    if several and hasattr(stream, "synchronize"):
        stream.synchronize()
    return several


def _handle(stream):
    handle = getattr(stream, "handle", None)
    return getattr(handle, "value", handle)


def grad_norm(grads, inv_scale, inf):
    """The 2-norm (``inf`` False) or inf-norm of all of ``grads`` together
    (device arrays, each times ``inv_scale`` cast to its dtype); see
    ``_update.grad_norm``. One launch per gradient into one accumulator per
    dtype, one copy back: this waits once."""
    import math
    from ._update import _BITS, max_abs_norm
    grads = [g for g in grads if g.shape[0]]
    if not grads:
        return 0.0
    stream = grads[0].stream
    dtypes = sorted({g.dtype for g in grads}, key=str)
    acc = cuda().to_device(np.zeros(len(dtypes), np.float64 if not inf else np.int64), stream=stream)
    several = _zeroed_before_others(stream, grads)
    for g in grads:
        slot = acc[dtypes.index(g.dtype):][:1]
        if inf:
            ints, mask = _BITS[g.dtype]
            launcher("max_abs_bits_cuda")(g.view(ints), mask, slot)
        else:
            launcher("sq_norm_cuda")(g, g.dtype.type(inv_scale), slot)
    if several:
        cuda().synchronize()
    values = acc.copy_to_host(stream=stream)
    if hasattr(stream, "synchronize"):
        stream.synchronize()
    if inf:
        return max_abs_norm(list(zip(dtypes, values)), inv_scale)
    return math.sqrt(float(values.sum()))
