"""The checkpoint file's layout, its header's encoding, and the header's checks.

A checkpoint is a 16-byte magic line (``MAGIC``), an 8-byte little-endian
header length, a JSON header, the arrays' raw little-endian C-order bytes,
and a 32-byte SHA-256 digest of everything before it. The header holds:

- ``"params"``: ``{"kind", "names"}`` (``kind`` one of ``_KINDS``), plus
  ``"layout"`` (``[[name, shape]]``) for a FlatParams;
- ``"arrays"``: ``[{"dtype", "shape"}]``, the params' arrays first, then
  the optimizer state's;
- ``"optimizer"`` (optional): ``{"class", "state_dict", "params"}``, the
  state dict with its arrays replaced by references into ``"arrays"``
  (:func:`_encode`), and which params each optimizer parameter is
  (``[[index, offset, size]]``; absent in files written before it was added).

Nothing here touches a file: ``_ckpt_io`` reads and writes these bytes.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

MAGIC = b"fastopt-ckpt-1\n\x00"
_DIGEST = 32
_LENGTH = struct.Struct("<Q")
_OVERHEAD = len(MAGIC) + _LENGTH.size + _DIGEST
_MAX_DEPTH = 64         # nesting allowed in a saved optimizer state
_KINDS = ("flat", "array", "dict", "list")
# What save writes (always little-endian) and what load reads (either order).
_CODES = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
_FILE_DTYPES = frozenset(np.dtype("<" + c).str for c in _CODES)
_READ_DTYPES = _FILE_DTYPES | frozenset(np.dtype(">" + c).str for c in _CODES)

#: What a header says about one array: its shape and dtype.
Spec: TypeAlias = "tuple[tuple[int, ...], np.dtype[Any]]"
#: What ``save`` says about an optimizer: class name, parameter map, state dict.
OptimizerEntry: TypeAlias = "tuple[str, list[list[int]], dict[str, Any]]"


class CheckpointError(ValueError):
    """The file is not a whole, intact fastopt checkpoint, or does not match.

    Raised by :func:`fastopt.load` for a damaged, truncated, extended or
    malformed file, a file that is not a regular file, and a checkpoint that
    does not match the params or optimizer given; nothing has been changed
    when it is raised. A subclass of ``ValueError``.
    """

    __module__ = "fastopt.checkpoint"  # where it is documented and imported from


def _file_dtype(a: NDArray[Any]) -> np.dtype[Any]:
    """The dtype ``a`` is stored as: its own, little-endian."""
    return a.dtype.newbyteorder("<")


def _storable(a: NDArray[Any]) -> bool:
    """Whether a checkpoint can hold ``a``'s dtype."""
    return _file_dtype(a).str in _FILE_DTYPES and not a.dtype.hasobject


# --- the optimizer state ---------------------------------------------------------

def _encode(value: object, arrays: list[NDArray[Any]]) -> Any:
    """JSON-ready form of a state-dict value; arrays go to ``arrays``."""
    if isinstance(value, np.ndarray):
        if not _storable(value):
            raise TypeError(f"cannot save an array of dtype {value.dtype} in a checkpoint")
        arrays.append(value)
        return {"__array__": len(arrays) - 1}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__} in a checkpoint")


def _decode(value: Any, arrays: list[NDArray[Any]], used: list[bool | None],
            depth: int = 0) -> Any:
    """Inverse of :func:`_encode`, refusing anything it cannot have written:
    ``CheckpointError``. Marks each array referenced in ``used`` (once only)."""
    if depth > _MAX_DEPTH:
        raise CheckpointError("the optimizer state is nested too deeply")
    if isinstance(value, list):
        return [_decode(v, arrays, used, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value  # JSON gives only None, bool, int, float and str here
    if len(value) != 1:
        raise CheckpointError(f"bad optimizer-state entry with keys {sorted(value)[:5]}")
    ((tag, inner),) = value.items()
    if tag == "__array__":
        if type(inner) is not int or not 0 <= inner < len(arrays) or used[inner] is not False:
            raise CheckpointError(f"bad array reference {inner!r} in the optimizer state")
        used[inner] = True
        return arrays[inner]
    if tag == "__tuple__" and isinstance(inner, list):
        return tuple(_decode(v, arrays, used, depth + 1) for v in inner)
    if tag == "__dict__" and isinstance(inner, list):
        out: dict[Any, Any] = {}
        for item in inner:
            if not (isinstance(item, list) and len(item) == 2):
                raise CheckpointError("bad dict entry in the optimizer state")
            key = _decode(item[0], arrays, used, depth + 1)
            try:
                if key in out:
                    raise CheckpointError(f"key {key!r} repeated in the optimizer state")
            except TypeError:
                raise CheckpointError("unhashable dict key in the optimizer state") from None
            out[key] = _decode(item[1], arrays, used, depth + 1)
        return out
    raise CheckpointError(f"bad optimizer-state entry {tag!r}")


# --- the whole header ------------------------------------------------------------

def _encode_header(kind: str, names: list[str], layout: list[list[Any]] | None,
                   arrays: list[NDArray[Any]], optimizer: OptimizerEntry | None) -> bytes:
    """The JSON header, as bytes, of a checkpoint of the params ``names`` of ``kind``.

    ``layout`` is a FlatParams' ``[[name, shape]]`` (None for another kind),
    ``arrays`` the params' arrays, to which the optimizer state's are
    appended; ``optimizer`` is None or ``(class name, parameter map, state dict)``.
    """
    header: dict[str, Any] = {"params": {"kind": kind, "names": names}}
    if layout is not None:
        header["params"]["layout"] = layout
    if optimizer is not None:
        name, found, state = optimizer
        header["optimizer"] = {"class": name, "params": found, "state_dict": _encode(state, arrays)}
    header["arrays"] = [{"dtype": _file_dtype(a).str, "shape": list(a.shape)} for a in arrays]
    return json.dumps(header).encode()


def _need(condition: object, what: str) -> None:
    """Refuse a malformed header: ``CheckpointError`` saying ``what`` unless ``condition``."""
    if not condition:
        raise CheckpointError(f"malformed header: {what}")


def _is_shape(x: object) -> bool:
    """Whether ``x`` is a shape as JSON gives it: a short list of non-negative ints."""
    return (isinstance(x, list) and len(x) <= 64
            and all(type(d) is int and 0 <= d <= sys.maxsize for d in x))


def _check_header(header: Any, data_size: int) -> list[Spec]:
    """Check the structure of a parsed header: ``[(shape, dtype)]`` of its arrays."""
    _need(isinstance(header, dict), "not a JSON object")
    keys = set(header)
    _need({"params", "arrays"} <= keys <= {"params", "arrays", "optimizer"}, f"keys {sorted(keys)}")
    saved = header["params"]
    _need(isinstance(saved, dict) and saved.get("kind") in _KINDS, "bad 'params'")
    _need(set(saved) == {"kind", "names"} | ({"layout"} if saved["kind"] == "flat" else set()),
          f"'params' has keys {sorted(saved)}")
    _need(isinstance(saved["names"], list) and all(isinstance(n, str) for n in saved["names"]),
          "bad parameter names")
    if saved["kind"] == "flat":
        _need(isinstance(saved["layout"], list)
              and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _is_shape(e[1])
                      for e in saved["layout"]), "bad FlatParams layout")
    table = header["arrays"]
    _need(isinstance(table, list) and len(table) >= len(saved["names"]), "bad array table")
    specs: list[Spec] = []
    total = 0
    for t in table:
        _need(isinstance(t, dict) and set(t) == {"dtype", "shape"} and isinstance(t["dtype"], str)
              and t["dtype"] in _READ_DTYPES
              and _is_shape(t["shape"]), f"bad array entry {str(t)[:80]}")
        dtype, shape = np.dtype(t["dtype"]), tuple(t["shape"])
        _need(math.prod(max(d, 1) for d in shape) * dtype.itemsize <= sys.maxsize,
              f"array shape {list(shape)} too large")
        total += math.prod(shape) * dtype.itemsize
        specs.append((shape, dtype))
    _need(total == data_size, f"the arrays take {total} bytes, the file holds {data_size}")
    _need("optimizer" in header or len(table) == len(saved["names"]), "arrays nothing refers to")
    if "optimizer" in header:
        saved = header["optimizer"]
        _need(isinstance(saved, dict) and {"class", "state_dict"} <= set(saved)
              <= {"class", "state_dict", "params"} and isinstance(saved["class"], str),
              "bad 'optimizer'")
        if "params" in saved:
            _need(isinstance(saved["params"], list)
                  and all(isinstance(e, list) and len(e) == 3
                          and all(type(x) is int and x >= 0 for x in e) for e in saved["params"]),
                  "bad optimizer parameter map")
    return specs
