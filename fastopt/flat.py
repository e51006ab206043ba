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

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, get_args

import numpy as np
from numpy.typing import DTypeLike

from . import _checks as C
from . import _arrays
from ._flat_layout import Array, ShapeLike, Views, lay_out
from ._state_dtype import is_bfloat16

if TYPE_CHECKING:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

__all__ = ["FlatParams", "FlatSegment"]

#: Where a FlatParams' buffers live.
Device: TypeAlias = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)


class _Buffers:
    """A parameter buffer and its gradient buffer, as read-only attributes:
    views and optimizers hold them, so a new one assigned would be ignored
    (write into them instead)."""

    _data: Array
    _grad_data: Array

    @property
    def data(self) -> Array:
        """The parameter buffer (read-only attribute: write into it)."""
        return self._data

    @property
    def grad_data(self) -> Array:
        """The gradient buffer (read-only attribute: write into it)."""
        return self._grad_data


class FlatSegment(_Buffers):
    """A contiguous run of a FlatParams' entries, to put in a parameter group.

    Made by :meth:`FlatParams.segment`; an optimizer treats it as one
    parameter whose gradient is ``grad_data``.

    Parameters
    ----------
    data, grad_data : numpy.ndarray or numba device array
        1-D views of the parameter and gradient buffers spanning the entries
        (kept as read-only attributes of the same names).
    names : iterable of str
        The entries, in layout order (kept as the tuple ``names``).
    """

    def __init__(self, data: Array, grad_data: Array, names: Iterable[str]) -> None:
        self._data, self._grad_data = data, grad_data
        self.names: tuple[str, ...] = tuple(names)

    def __repr__(self) -> str:
        return f"FlatSegment({', '.join(self.names)}; {self.data.size} elements)"


class FlatParams(_Buffers, Mapping[str, "Array"]):
    """Named parameters stored as views of one C-contiguous 1-D buffer.

    ``flat[name]`` is the parameter's view into ``flat.data``, and
    ``flat.grad[name]`` its gradient's view into ``flat.grad_data`` (both
    start at zero). ``FlatParams.from_arrays`` builds one from existing
    arrays, copying their values in. Pass the FlatParams itself (or its
    segments, in groups) to an optimizer, then call ``opt.step()`` with no
    argument.

    Parameters
    ----------
    shapes : mapping of str to int or tuple of int
        The entries' names and shapes, laid out in this order.
    dtype : numpy.float32 (default) or numpy.float64
        The buffers' dtype.
    device : {"cpu", "cuda"}
        "cpu" (default): NumPy arrays; "cuda": numba device arrays on the
        current GPU (needs ``fastopt[cuda]``).

    Attributes
    ----------
    data, grad_data : numpy.ndarray or numba device array
        The 1-D parameter and gradient buffers. The attributes are read-only
        (the views and optimizers hold these buffers): write into them,
        ``flat.data[:] = values``.
    grad : mapping of str to array
        Each entry's view into ``grad_data``.
    device : {"cpu", "cuda"}

    Raises
    ------
    TypeError, ValueError
        A bad name, shape, dtype or device (the message names it), or an
        empty ``shapes``.

    Examples
    --------
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

    def __init__(self, shapes: Mapping[str, ShapeLike], dtype: DTypeLike = np.float32,
                 device: Device = "cpu") -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(shapes, Mapping):
            raise TypeError(f"shapes must be a mapping of name -> shape, got {type(shapes).__name__}")
        if dtype is None:  # np.dtype(None) would be float64
            raise TypeError("dtype must be float32 or float64, got None")
        dtype = np.dtype(dtype)
        if dtype not in C.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        layout, offset = lay_out(shapes)
        self._layout = layout
        self.device: Device = device
        self._data: Array = _arrays.new(offset, dtype, device, value=0)
        self._grad_data: Array = _arrays.new(offset, dtype, device, value=0)
        self.grad: Mapping[str, Array] = Views(self._grad_data, layout)
        self._views = Views(self._data, layout)

    # Compared and hashed by identity, as the arrays it holds cannot be (a
    # Mapping's value comparison would compare arrays element-wise).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], dtype: DTypeLike | None = None,
                    device: Device = "cpu") -> FlatParams:
        """A FlatParams on ``device`` holding copies of ``arrays``.

        Parameters
        ----------
        arrays : mapping of str to array
            The entries, in layout order: NumPy or GPU arrays (GPU ones are
            copied through the host), or array-likes.
        dtype : numpy.float32 or numpy.float64, optional
            Default: the arrays' common float dtype (float32 if there is none).
        device : {"cpu", "cuda"}

        Returns
        -------
        FlatParams
            Its values the arrays' (cast to ``dtype``), its gradients zero.
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays must be a mapping of name -> array, got {type(arrays).__name__}")
        arrays = {name: _arrays.host_array(a) for name, a in arrays.items()}
        for name, a in arrays.items():
            # complex would lose its imaginary part; objects, NaN (bfloat16 widens exactly)
            if a.dtype.kind not in "biuf" and not is_bfloat16(a):
                raise TypeError(f"arrays[{name!r}] must hold real numbers, got dtype {a.dtype}")
        if dtype is None:
            try:
                dtype = np.result_type(*arrays.values()) if arrays else np.float32
            except TypeError:  # (NumPy's DTypePromotionError: bfloat16 and int64, say)
                raise TypeError("arrays have dtypes with no common type "
                                f"({sorted({str(a.dtype) for a in arrays.values()})}): "
                                "pass dtype=") from None
            if np.dtype(dtype) not in C.FLOAT_DTYPES:
                dtype = np.float32
        flat = cls({name: a.shape for name, a in arrays.items()}, dtype, device)
        if device == "cpu":
            for name, a in arrays.items():
                flat[name][...] = a
        else:
            host = np.concatenate([np.asarray(a, flat.dtype).ravel() for a in arrays.values()])
            cast("DeviceNDArray", flat.data).copy_to_device(host)
        return flat

    def __getitem__(self, name: str) -> Array:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The buffers' dtype (float32 or float64)."""
        return self.data.dtype

    def segment(self, *names: str) -> FlatSegment:
        """The contiguous part of the buffers holding ``names``, for a parameter group.

        Parameters
        ----------
        *names : str
            Entries adjacent in the layout (in any order).

        Returns
        -------
        FlatSegment
            Views of both buffers spanning exactly those entries.

        Raises
        ------
        KeyError
            An unknown name.
        ValueError
            No name, a name given twice, or entries that are not adjacent.
        """
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

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        _arrays.fill(self.grad_data, 0)

    def __repr__(self) -> str:
        entries = ", ".join(f"{n}: {s}" for n, (_, _, s) in self._layout.items())
        where = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"FlatParams({{{entries}}}, dtype={self.dtype}{where})"

