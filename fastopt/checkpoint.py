"""Crash-safe checkpoints: parameters and optimizer state in one checksummed file.

``save(path, params, optimizer)`` writes a temporary file beside ``path``,
flushes it to disk (fsync), then renames it over ``path`` (and syncs the
folder): at every moment ``path`` holds either the previous checkpoint or the
new one, whole, even if the process is killed mid-save.
``load(path, params, optimizer)`` reads and verifies the whole file (SHA-256
over every byte) before it touches anything: a truncated or corrupted file
raises ``CheckpointError`` and nothing is loaded.

``params`` is a list (or tuple) of arrays, a dict of name -> array, a
``FlatParams`` or a single array; ``load`` copies the saved values into the
arrays you pass, which must have the saved shapes and dtypes.

File layout: a 16-byte magic line, an 8-byte little-endian header length, a
JSON header (array table, parameter layout, optimizer state dict with arrays
replaced by references), the arrays' raw C-order bytes, and a 32-byte SHA-256
digest of everything before it.
"""

import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from .flat import FlatParams

__all__ = ["save", "load", "CheckpointError"]

MAGIC = b"fastopt-ckpt-1\n\x00"
_DIGEST = 32


class CheckpointError(ValueError):
    """The file is not a whole, intact fastopt checkpoint, or does not match."""


def _named_params(params):
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


def _check_arrays(named):
    for name, a in named:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy.ndarray, got {type(a).__name__}")


def _encode(value, arrays):
    """JSON-ready form of a state-dict value; arrays go to ``arrays``."""
    if isinstance(value, np.ndarray):
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


def _decode(value, arrays):
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, arrays) for v in value["__tuple__"])
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def save(path, params, optimizer=None):
    """Write ``params`` (and ``optimizer``'s state) to ``path`` atomically."""
    kind, named = _named_params(params)
    _check_arrays(named)
    arrays = [np.ascontiguousarray(a) for _, a in named]
    header = {"params": {"kind": kind, "names": [n for n, _ in named]}}
    if isinstance(params, FlatParams):
        header["params"]["layout"] = [[n, list(params[n].shape)] for n in params]
    if optimizer is not None:
        header["optimizer"] = {"class": type(optimizer).__name__,
                               "state_dict": _encode(optimizer.state_dict(), arrays)}
    header["arrays"] = [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]
    blob = json.dumps(header).encode()

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()
            for chunk in (MAGIC, struct.pack("<Q", len(blob)), blob):
                f.write(chunk)
                digest.update(chunk)
            for a in arrays:
                raw = a.reshape(-1).view(np.uint8)
                f.write(raw)
                digest.update(raw)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path):
    """Read and verify the whole file: ``(header, arrays)``."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256()

        def take(n, what):
            data = f.read(n)
            if len(data) != n:
                raise CheckpointError(f"{path}: truncated (ends inside the {what})")
            digest.update(data)
            return data

        if take(len(MAGIC), "magic") != MAGIC:
            raise CheckpointError(f"{path}: not a fastopt checkpoint")
        (length,) = struct.unpack("<Q", take(8, "header length"))
        if length > size:
            raise CheckpointError(f"{path}: truncated or corrupted (header length {length})")
        try:
            header = json.loads(take(length, "header"))
            table = header["arrays"]
            arrays = [np.empty(t["shape"], np.dtype(t["dtype"])) for t in table]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupted header ({e})") from None
        for a in arrays:
            raw = a.reshape(-1).view(np.uint8)
            if f.readinto(raw) != raw.size:
                raise CheckpointError(f"{path}: truncated (ends inside the array data)")
            digest.update(raw)
        stored = f.read(_DIGEST)
        if len(stored) != _DIGEST or f.read(1):
            raise CheckpointError(f"{path}: truncated or has trailing bytes")
        if stored != digest.digest():
            raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted")
    return header, arrays


def load(path, params, optimizer=None):
    """Load a checkpoint written by :func:`save` into ``params`` (and ``optimizer``).

    The file is verified whole, and checked against ``params`` and the
    optimizer, before anything is written; on any error nothing changes.
    """
    kind, named = _named_params(params)
    _check_arrays(named)
    header, arrays = _read(os.fspath(path))
    saved = header["params"]
    if saved["kind"] != kind or saved["names"] != [n for n, _ in named]:
        raise CheckpointError(f"{path}: holds params {saved['kind']} {saved['names']}, "
                              f"but {kind} {[n for n, _ in named]} were given")
    if kind == "flat" and saved.get("layout") != [[n, list(params[n].shape)] for n in params]:
        raise CheckpointError(f"{path}: the FlatParams layout differs from the saved one")
    for (name, a), src in zip(named, arrays):
        if a.shape != src.shape or a.dtype != src.dtype:
            raise CheckpointError(f"{path}: params[{name!r}] is {a.dtype}{list(a.shape)}, "
                                  f"the checkpoint has {src.dtype}{list(src.shape)}")
        if not a.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only")
    if optimizer is not None:
        if "optimizer" not in header:
            raise CheckpointError(f"{path}: holds no optimizer state")
        saved_class = header["optimizer"]["class"]
        if saved_class != type(optimizer).__name__:
            raise CheckpointError(f"{path}: holds {saved_class} state, not {type(optimizer).__name__}")
        # load_state_dict checks everything before it changes anything.
        optimizer.load_state_dict(_decode(header["optimizer"]["state_dict"], arrays))
    for (_, a), src in zip(named, arrays):
        a[...] = src
