"""Reduced-precision optimizer state: names, layouts, conversions (host side).

``state_dtype`` is None (the parameter's dtype, as always), "float32" or
"float64" (which must then be the parameter's dtype), "bfloat16", "int8" or
"int4" (float32 parameters only). How the kernels read and write such state
is ``kernels/codecs.py``; here is what the API layer needs: checking a
name, choosing a parameter's codec, allocating state, and converting state
to and from float32 (state dicts, a change of ``state_dtype``).

A parameter's state with a codec holds, for each state array ``key``:

- ``"bfloat16"``: ``key``, a bfloat16 array of the parameter's shape (an
  ``ml_dtypes.bfloat16`` array on the host, its uint16 bits on the GPU);
- ``"int8"``/``"int4"``: ``key``, the 1-D uint8 codes (int4: two per byte),
  and ``key + "_absmax"``, one float32 per block;

and ``"state_dtype"`` names the codec. Block-wise codecs apply to
parameters of at least ``MIN_BLOCKWISE_SIZE`` elements; smaller ones keep
float32 state (their state has no ``"state_dtype"``).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from ._arrays import host_array, place_like
from .kernels import _cpu_loops, codecs  # (_cpu_loops: the host conversions too)

NAMES = ("float32", "float64", "bfloat16", "int8", "int4")
BLOCKWISE = ("int8", "int4")
CODECS = ("bfloat16", *BLOCKWISE)  # what a state's "state_dtype" names (float state: none)
MIN_BLOCKWISE_SIZE = codecs.MIN_BLOCKWISE_SIZE
# Which map each optimizer's state arrays use (the first moment's is signed).
SIGNED = {"momentum_buffer": True, "sum": False, "exp_avg": True, "exp_avg_sq": False,
          "max_exp_avg_sq": False}


def check_name(value: Any) -> str | None:
    """``state_dtype`` checked: None or one of ``NAMES``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"state_dtype must be a string or None, got {type(value).__name__}")
    if value not in NAMES:
        raise ValueError(f"state_dtype must be one of {', '.join(map(repr, NAMES))} or None, "
                         f"got {value!r}")
    return value


def bfloat16() -> np.dtype:
    """numpy's bfloat16 dtype, from ml_dtypes (an optional dependency)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError('state_dtype="bfloat16" needs ml_dtypes: pip install "fastopt[lowp]"') \
            from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(a: Any) -> bool:
    """Whether array ``a`` holds ml_dtypes' bfloat16 (told by the name of the
    dtype's scalar type: ml_dtypes need not be imported, and NumPy 2 builds
    ``dtype.name`` anew on each call, microseconds on every step)."""
    return a.dtype.type.__name__ == "bfloat16"


def plain_dtype(p: Any) -> np.dtype:
    """The dtype of parameter ``p``'s full-precision state (and of its
    kernel's scalars): the parameter's own, float32 for bfloat16 parameters."""
    return np.dtype(np.float32) if is_bfloat16(p) else p.dtype


_FULL = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def resolve(state_dtype: str | None, p: Any, where: str = "") -> str:
    """The codec of parameter ``p``'s state: "" (full precision, ``plain_dtype``),
    "bfloat16", "int8" or "int4"; raises if ``state_dtype`` cannot apply to ``p``."""
    at = f"{where}: " if where else ""
    if is_bfloat16(p):
        if state_dtype is None or state_dtype == "float32":
            return ""
        raise ValueError(f"{at}state_dtype={state_dtype!r} on a bfloat16 parameter: "
                         "bfloat16 parameters keep float32 state (state_dtype None or 'float32')")
    if state_dtype is None:
        return ""
    if state_dtype in ("float32", "float64"):
        if p.dtype == _FULL[state_dtype]:
            return ""
        raise ValueError(f"{at}state_dtype={state_dtype!r} on a {p.dtype} parameter: "
                         "full-precision state has the parameter's dtype")
    if p.dtype != np.float32:
        raise ValueError(f"{at}state_dtype={state_dtype!r} needs float32 parameters, "
                         f"got {p.dtype}")
    if state_dtype == "bfloat16":
        if isinstance(p, np.ndarray):
            bfloat16()
        return state_dtype
    return state_dtype if p.size >= MIN_BLOCKWISE_SIZE else ""


def layout(codec: str, p: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{suffix: (shape, dtype)}`` of one state array of ``p`` under ``codec``."""
    if codec == "bfloat16":
        return {"": (p.shape, bfloat16() if isinstance(p, np.ndarray) else np.dtype(np.uint16))}
    n, block = p.size, codecs.BLOCK[codec]
    codes = n if codec == "int8" else -(-n // 2)
    return {"": ((codes,), np.dtype(np.uint8)), "_absmax": ((-(-n // block),), np.dtype(np.float32))}


def fits(codec: str, p: Any, state: dict, keys: tuple[str, ...]) -> str | None:
    """What is wrong with ``state`` (of codec ``codec``) for parameter ``p``, or None."""
    for key in keys:
        if state.get(key) is None:
            continue
        for suffix, (shape, dtype) in layout(codec, p).items():
            a = state.get(key + suffix)
            if a is None or tuple(a.shape) != shape or a.dtype != dtype:
                got = "missing" if a is None else f"{a.dtype}{list(a.shape)}"
                return (f"'{key}{suffix}' is {got}; {codec} state of a {p.dtype}{list(p.shape)} "
                        f"parameter is {dtype}{list(shape)}")
    return None


_TABLES: dict = {}


def tables(codec: str, p: Any) -> tuple[Any, Any]:
    """``(qmaps, qluts)`` of a block-wise codec, where ``p`` lives (copied once)."""
    key = (codec, isinstance(p, np.ndarray))
    if key not in _TABLES:
        qmaps, qluts = codecs.tables(codec)
        _TABLES[key] = (place_like(p, qmaps), place_like(p, qluts))
    return _TABLES[key]


def _offsets(codec: str, signed: bool) -> tuple[int, int, int]:
    size, signed_off, unsigned_off, signed_loff, unsigned_loff = codecs.layout(codec)
    return (signed_off, size, signed_loff) if signed else (unsigned_off, size, unsigned_loff)


def encode(codec: str, key: str, values: np.ndarray, p: Any) -> dict[str, Any]:
    """State array ``key`` of parameter ``p`` from float32 ``values`` (any
    shape with p's size), stored by ``codec``, where ``p`` lives."""
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if codec == "bfloat16":
        bits = np.empty(x.shape, np.uint16)
        _cpu_loops.to_bf16(x, bits)
        bits = bits.reshape(p.shape)
        return {key: bits.view(bfloat16()) if isinstance(p, np.ndarray) else place_like(p, bits)}
    (codes_shape, _), (absmax_shape, _) = layout(codec, p).values()
    codes, absmax = np.zeros(codes_shape, np.uint8), np.empty(absmax_shape, np.float32)
    off, size, loff = _offsets(codec, SIGNED[key])
    qmaps, qluts = codecs.tables(codec)
    _cpu_loops.quantize_blocks(x, codes, absmax, qmaps, off, size, qluts, loff,
                               codecs.BLOCK[codec], codec == "int4")
    return {key: place_like(p, codes), key + "_absmax": place_like(p, absmax)}


def decode(codec: str, key: str, state: dict, shape: tuple[int, ...]) -> np.ndarray:
    """State array ``key`` as a float32 NumPy array of ``shape`` (a copy)."""
    stored = host_array(state[key])
    n = int(np.prod(shape))
    out = np.empty(n, np.float32)
    # What the loops read, checked against ``shape`` first: they check no
    # bounds, and state of another size (set by hand) was read past its end.
    sizes = {suffix: int(np.prod(size)) for suffix, (size, _) in layout(
        codec, types.SimpleNamespace(shape=tuple(shape), size=n)).items()}
    if codec == "bfloat16":
        bits = np.ascontiguousarray(stored).reshape(-1).view(np.uint16)
        _check_size(key, bits, sizes[""], np.uint16, codec, n)
        _cpu_loops.from_bf16(bits, out)
    else:
        codes = np.ascontiguousarray(stored).reshape(-1)
        scales = np.ascontiguousarray(host_array(state[key + "_absmax"])).reshape(-1)
        _check_size(key, codes, sizes[""], np.uint8, codec, n)
        _check_size(key + "_absmax", scales, sizes["_absmax"], np.float32, codec, n)
        off, _, _ = _offsets(codec, SIGNED[key])
        qmaps, _ = codecs.tables(codec)
        _cpu_loops.dequantize_blocks(codes, scales, out, qmaps, off, codecs.BLOCK[codec],
                                     codec == "int4")
    return out.reshape(shape)


def _check_size(key: str, a: np.ndarray, size: int, dtype: Any, codec: str, n: int) -> None:
    if a.size != size or a.dtype != dtype:
        raise ValueError(f"state '{key}' holds {a.size} {a.dtype} values; {codec} state of "
                         f"{n} elements holds {size} {np.dtype(dtype)}")


def new(codec: str, key: str, p: Any, value: float = 0.0) -> dict[str, Any]:
    """State array ``key`` of ``p`` filled with ``value``, stored by ``codec``."""
    return encode(codec, key, np.full(p.shape, value, np.float32), p)


def kernel_view(codec: str, a: Any) -> Any:
    """A stored state array as the kernels take it: 1-D, bfloat16 as its uint16 bits."""
    a = a if a.ndim == 1 else a.ravel()
    if codec == "bfloat16" and isinstance(a, np.ndarray):
        return a.view(np.uint16)
    return a
