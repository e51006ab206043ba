"""What ``save`` and ``load`` were given: the path, the params as named arrays,
and which of those arrays the optimizer's parameters are."""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ._ckpt_format import _storable
from .flat import FlatParams
from .optimizers import Optimizer

#: A path as ``open()`` takes it.
PathArg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
#: The forms ``params`` may take.
ParamsArg: TypeAlias = ("list[NDArray[Any]] | tuple[NDArray[Any], ...] | dict[str, NDArray[Any]]"
                        " | FlatParams | NDArray[Any]")
#: ``params`` as ``(name, array)`` pairs.
Named: TypeAlias = "list[tuple[str, NDArray[Any]]]"


def _fspath(path: PathArg) -> str:
    """``path`` (str, bytes or os.PathLike) as a str."""
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}") from None
    if not text:
        raise ValueError("path is empty")
    return text


def _named_params(params: ParamsArg) -> tuple[str, Named]:
    """``(kind, [(name, array)])`` for the forms ``params`` may take."""
    if isinstance(params, FlatParams):
        return "flat", [("data", params.data)]
    if isinstance(params, np.ndarray):
        return "array", [("0", params)]
    if isinstance(params, dict):
        return "dict", [(str(k), v) for k, v in params.items()]
    if isinstance(params, (list, tuple)):
        return "list", [(str(i), v) for i, v in enumerate(params)]
    raise TypeError("params must be a list or dict of arrays, a FlatParams or an array, "
                    f"got {type(params).__name__}")


def _flat_layout(flat: FlatParams) -> list[list[Any]]:
    """A FlatParams' entries as the header stores them: ``[[name, shape]]``."""
    return [[n, list(flat[n].shape)] for n in flat]


def _check_arrays(named: Named) -> None:
    """Refuse what a checkpoint cannot hold: ``TypeError`` naming the entry."""
    for name, a in named:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy.ndarray (checkpoints hold host "
                            f"arrays), got {type(a).__name__}")
        if not _storable(a):
            raise TypeError(f"params[{name!r}] has dtype {a.dtype}; checkpoints hold float16/32/64 "
                            "and integer arrays")


def _address(a: NDArray[Any]) -> int:
    """The address of ``a``'s first element."""
    return a.__array_interface__["data"][0]


def _optimizer_map(optimizer: Optimizer, kind: str, named: Named) -> list[list[int]]:
    """Which params each of ``optimizer``'s parameters is: ``[[index, offset, size]]``
    (``offset`` and ``size`` in elements); ValueError if one is none of them."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    found: list[list[int]] = []
    for k, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        if not isinstance(p, np.ndarray):
            raise ValueError(f"optimizer parameter {k} is a {type(p).__name__}, not a numpy.ndarray: "
                             "checkpoints hold host arrays only")
        where = None
        for i, (_, a) in enumerate(named):
            if p.dtype != a.dtype:
                continue
            if (_address(p), p.shape, p.strides) == (_address(a), a.shape, a.strides):
                where = [i, 0, a.size]
                break
            start = _address(p) - _address(a)
            if (kind == "flat" and p.ndim == 1 and p.flags.c_contiguous and 0 <= start
                    and start + p.nbytes <= a.nbytes and start % a.itemsize == 0):
                where = [i, start // a.itemsize, p.size]
                break
        if where is None:
            raise ValueError(f"optimizer parameter {k} ({p.dtype}{list(p.shape)}) is not one of the "
                             "given params" + (" nor a segment of its buffer" if kind == "flat" else "")
                             + ": the optimizer does not train these params")
        found.append(where)
    return found
