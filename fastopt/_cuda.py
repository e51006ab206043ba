"""Host-side support for GPU arrays: recognising, viewing, allocating, copying.

GPU arrays are numba's device arrays (also the CUDA simulator's) and any
object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
tensors, ...). Such objects are viewed, without copying, as numba device
arrays: the kernels and every check work on those views.

numba.cuda is imported on first use, never by ``import fastopt``; without
numba-cuda, or without a usable GPU, asking for CUDA raises an error that
says what is missing.
"""

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
        from numba import cuda as module
        if not module.is_available():
            raise RuntimeError("the CUDA target needs an NVIDIA GPU and its driver, and numba-cuda "
                               "finds none usable (python -c 'from numba import cuda; "
                               "cuda.detect()' says why)")
        _numba_cuda = module
    return _numba_cuda


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
    kernels().launch_fill(a.ravel().bind(stream), a.dtype.type(value))


def to_host(a):
    """A NumPy copy of GPU array ``a``, once the GPU has finished its work."""
    cuda().synchronize()
    return as_array("array", a).bind(0).copy_to_host()


def to_device(a, stream=0):
    """A device copy of NumPy array ``a``, copied on ``stream``."""
    return cuda().to_device(a, stream=stream).bind(0)
