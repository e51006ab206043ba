"""FlatParams: many named parameters as views of one contiguous buffer.

A model of many small arrays costs one kernel call per array per step. Lay
them out in one buffer instead, with a matching gradient buffer, and one
fused call steps them all::

    flat = FlatParams({"w1": (784, 256), "b1": (256,)}, dtype=np.float32)
    flat["w1"]            # a (784, 256) view into flat.data
    flat.grad["w1"]       # the matching view into flat.grad_data
    opt = fastopt.Adam(flat, lr=1e-3)
    opt.step()            # no argument: the gradients are flat.grad_data

Parameter groups take one call per group: ``flat.segment("b1", "b2")`` is
the part of the buffer holding those entries (which must be adjacent in the
layout, i.e. in the order the mapping gave them)::

    opt = fastopt.AdamW([{"params": flat.segment("w1", "w2")},
                         {"params": flat.segment("b1", "b2"), "weight_decay": 0.0}])

``FlatParams(..., device="cuda")`` puts both buffers on the GPU (numba
device arrays; wrap a view for a framework without copying, e.g.
``torch.as_tensor(flat["w1"], device="cuda")``), and the optimizer then
steps them with the CUDA kernels.
"""

from collections.abc import Mapping
from math import prod

import numpy as np

from . import _checks as C
from . import _dispatch

__all__ = ["FlatParams", "FlatSegment"]

DEVICES = ("cpu", "cuda")


class _Views(Mapping):
    """Read-only name -> view mapping over one buffer."""

    def __init__(self, buffer, layout):
        self._buffer, self._layout = buffer, layout

    def __getitem__(self, name):
        start, stop, shape = self._layout[name]
        return self._buffer[start:stop].reshape(shape)

    def __iter__(self):
        return iter(self._layout)

    def __len__(self):
        return len(self._layout)

    def __repr__(self):
        return f"<views of {len(self)} arrays: {', '.join(self._layout)}>"


class FlatSegment:
    """A contiguous run of a FlatParams' entries, to put in a parameter group.

    ``data`` and ``grad_data`` are 1-D views of the parameter and gradient
    buffers; an optimizer treats the segment as one parameter whose gradient
    is ``grad_data``.
    """

    def __init__(self, data, grad_data, names):
        self.data, self.grad_data, self.names = data, grad_data, tuple(names)

    def __repr__(self):
        return f"FlatSegment({', '.join(self.names)}; {self.data.size} elements)"


class FlatParams(Mapping):
    """Named parameters stored as views of one C-contiguous 1-D buffer.

    Parameters
    ----------
    shapes : mapping of name -> shape (an int or a tuple)
        The entries, laid out in this order.
    dtype : float32 (default) or float64
    device : "cpu" (default: NumPy arrays) or "cuda" (numba device arrays on
        the current GPU; needs ``fastopt[cuda]``)

    ``flat[name]`` is the parameter's view into ``flat.data``, and
    ``flat.grad[name]`` its gradient's view into ``flat.grad_data`` (both
    start at zero). ``FlatParams.from_arrays`` builds one from existing
    arrays, copying their values in. Pass the FlatParams itself (or its
    segments, in groups) to an optimizer, then call ``opt.step()`` with no
    argument.

    Example::

        >>> import numpy as np, fastopt
        >>> flat = fastopt.FlatParams({"w": (2, 3), "b": 3})
        >>> flat.data.shape, flat["w"].shape
        ((9,), (2, 3))
        >>> flat.grad["b"][:] = 1.0
        >>> opt = fastopt.SGD(flat, lr=0.5)
        >>> opt.step()
        >>> flat["b"]
        array([-0.5, -0.5, -0.5], dtype=float32)
    """

    def __init__(self, shapes, dtype=np.float32, device="cpu"):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(shapes, Mapping):
            raise TypeError(f"shapes must be a mapping of name -> shape, got {type(shapes).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in C.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        layout, offset = {}, 0
        for name, shape in shapes.items():
            if not isinstance(name, str):
                raise TypeError(f"names must be strings, got {name!r}")
            shape = _shape(name, shape)
            size = prod(shape)
            layout[name] = (offset, offset + size, shape)
            offset += size
        if not layout:
            raise ValueError("shapes is empty")
        self._layout = layout
        self.device = device
        self.data = _dispatch.new(offset, dtype, device, value=0)
        self.grad_data = _dispatch.new(offset, dtype, device, value=0)
        self.grad = _Views(self.grad_data, layout)
        self._views = _Views(self.data, layout)

    @classmethod
    def from_arrays(cls, arrays, dtype=None, device="cpu"):
        """A FlatParams on ``device`` holding copies of ``arrays`` (a mapping of name -> array).

        The arrays may be NumPy or GPU arrays (GPU ones are copied through the
        host). ``dtype`` defaults to the arrays' common float dtype (float32
        when there is none).
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays must be a mapping of name -> array, got {type(arrays).__name__}")
        arrays = {name: _dispatch.host_array(a) for name, a in arrays.items()}
        if dtype is None:
            dtype = np.result_type(*arrays.values()) if arrays else np.float32
            if np.dtype(dtype) not in C.FLOAT_DTYPES:
                dtype = np.float32
        flat = cls({name: a.shape for name, a in arrays.items()}, dtype, device)
        if device == "cpu":
            for name, a in arrays.items():
                flat[name][...] = a
        else:
            host = np.concatenate([np.asarray(a, flat.dtype).ravel() for a in arrays.values()])
            flat.data.copy_to_device(host)
        return flat

    def __getitem__(self, name):
        return self._views[name]

    def __iter__(self):
        return iter(self._layout)

    def __len__(self):
        return len(self._layout)

    @property
    def dtype(self):
        return self.data.dtype

    def segment(self, *names):
        """The contiguous part of the buffers holding ``names`` (adjacent entries)."""
        if not names:
            raise ValueError("segment needs at least one name")
        for name in names:
            if name not in self._layout:
                raise KeyError(name)
        if len(set(names)) != len(names):
            raise ValueError("segment lists a name twice")
        spans = sorted(self._layout[name][:2] for name in names)
        for (_, stop), (start, _) in zip(spans, spans[1:]):
            if stop != start:
                order = list(self._layout)
                raise ValueError(f"entries {list(names)} are not adjacent in the layout {order}; "
                                 "list them next to each other when creating the FlatParams")
        start, stop = spans[0][0], spans[-1][1]
        ordered = [n for n in self._layout if n in set(names)]
        return FlatSegment(self.data[start:stop], self.grad_data[start:stop], ordered)

    def zero_grad(self):
        """Set every gradient to zero."""
        _dispatch.fill(self.grad_data, 0)

    def __repr__(self):
        entries = ", ".join(f"{n}: {s}" for n, (_, _, s) in self._layout.items())
        where = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"FlatParams({{{entries}}}, dtype={self.dtype}{where})"


def _shape(name, shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        if isinstance(shape, str) or not all(isinstance(d, (int, np.integer)) for d in shape):
            raise TypeError
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape of {name!r} must be an int or a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape of {name!r} has a negative dimension: {shape}")
    return shape
