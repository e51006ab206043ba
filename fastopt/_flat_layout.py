"""Where a FlatParams' entries lie in its buffers, and views of them by name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from math import prod
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

#: A buffer or a view: a NumPy array, or a numba device array with ``device="cuda"``.
Array: TypeAlias = "NDArray[np.floating[Any]] | DeviceNDArray"
#: An entry's shape: an int or a sequence of ints.
ShapeLike: TypeAlias = "int | np.integer[Any] | Sequence[int | np.integer[Any]]"
#: name -> (start, stop, shape) of each entry in the buffers.
Layout: TypeAlias = "dict[str, tuple[int, int, tuple[int, ...]]]"


def lay_out(shapes: Mapping[str, ShapeLike]) -> tuple[Layout, int]:
    """The entries of ``shapes`` one after the other: their layout and total size.

    ``TypeError`` or ``ValueError`` for a name that is not a str, a bad shape
    (naming its entry), or no entry at all.
    """
    layout: Layout = {}
    offset = 0
    for name, shape in shapes.items():
        if not isinstance(name, str):
            raise TypeError(f"names must be strings, got {name!r}")
        dims = _shape(name, shape)
        size = prod(dims)
        layout[name] = (offset, offset + size, dims)
        offset += size
    if not layout:
        raise ValueError("shapes is empty")
    return layout, offset


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints, not bools) as a tuple of
    Python ints that NumPy can make an array of."""
    def whole(d: Any) -> bool:
        return isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
    if whole(shape):
        shape = (shape,)
    try:
        if isinstance(shape, str) or not all(whole(d) for d in shape):
            raise TypeError
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape of {name!r} must be an int or a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape of {name!r} has a negative dimension: {shape}")
    if len(shape) > _MAX_DIMS or any(d > _MAX_DIM for d in shape):
        raise ValueError(f"shape of {name!r} is beyond NumPy's limits ({_MAX_DIMS} dimensions, "
                         f"each at most {_MAX_DIM}): {shape}")
    return shape


_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32  # NPY_MAXDIMS
_MAX_DIM = int(np.iinfo(np.intp).max)


class Views(Mapping[str, "Array"]):
    """Read-only name -> view mapping over one buffer."""

    def __init__(self, buffer: Array, layout: Layout) -> None:
        self._buffer, self._layout = buffer, layout

    def __getitem__(self, name: str) -> Array:
        start, stop, shape = self._layout[name]
        return self._buffer[start:stop].reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    def __repr__(self) -> str:
        return f"<views of {len(self)} arrays: {', '.join(self._layout)}>"
