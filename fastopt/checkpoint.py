"""Crash-safe checkpoints: parameters and optimizer state in one checksummed file.

``save(path, params, optimizer)`` writes a temporary file in the folder of
``path``, flushes it to disk (fsync), then renames it over ``path`` (and syncs
the folder): at every moment ``path`` holds either the previous checkpoint or
the new one, whole, even if the process is killed mid-save. If ``path`` is a
symbolic link, the file it points to is replaced and the link kept. A new
file gets the permission bits ``open()`` would give it (``0o666`` less the
umask); a file that is replaced keeps its permission bits (not its owner).

Temporary files are named ``.<target>.<host>.<pid>.<random>.fastopt-tmp``
(``<target>`` a hash of the file name, ``<host>`` of the host name and PID
namespace): short whatever the length of the name. A save killed before its
rename leaves one behind; the next ``save`` to the same path removes the
leftovers of writers on this host (and PID namespace) whose process no
longer exists, and, where that cannot be known (another host, or no
``os.kill(pid, 0)`` as on Windows), those not modified for an hour
(``_STALE_AGE_S``). A writer on this host that is still running keeps its
file, however long it takes; a writer elsewhere that wrote nothing for an
hour loses it, and its ``save`` then fails with ``OSError``, leaving
``path`` as it was.

``load(path, params, optimizer)`` reads the file twice: first it streams it
through SHA-256 (a fixed 1 MiB buffer, nothing parsed) and compares the
digest stored at its end; only then does it parse and check the header
(known keys, the type of every field, dtypes from the list below, shapes of
non-negative integers whose bytes add up exactly to the data section, a
well-formed optimizer state) and read the arrays, checking the digest again
(so a file changed between the two reads is refused too). Every damaged,
truncated, extended or malformed file, and a file that is not a regular
file, raises ``CheckpointError``, before anything is allocated by the size
its header asks for and before anything is written (a missing or unreadable
file raises the ``OSError`` that ``open()`` would).

``params`` is a list (or tuple) of arrays, a dict of name -> array, a
``FlatParams`` or a single array, of any shape (0-d, empty, non-contiguous
included) and of dtype float16/32/64 or a signed or unsigned integer;
``load`` copies the saved values into the arrays you pass, which must have
the saved shapes and dtypes (either byte order). ``optimizer`` must train
those arrays: each of its parameters must be one of them (the same memory),
or, for a ``FlatParams``, its buffer or a segment of it; ``save`` and
``load`` refuse another optimizer with ``ValueError`` before doing anything,
and ``load`` refuses a checkpoint whose optimizer parameters were other
parts of the params than the given optimizer's. Checkpoints hold host
(NumPy) arrays only: GPU parameters are refused.

File layout: a 16-byte magic line, an 8-byte little-endian header length, a
JSON header (array table, parameter layout, optimizer state dict with arrays
replaced by references, and which params each optimizer parameter is), the
arrays' raw little-endian C-order bytes, and a 32-byte SHA-256 digest of
everything before it. Files written before the optimizer-parameter map was
added load as before, without that check.
"""

import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
import struct
import sys
import time

import numpy as np

from .flat import FlatParams
from .optimizers import Optimizer

__all__ = ["save", "load", "CheckpointError"]

MAGIC = b"fastopt-ckpt-1\n\x00"
_DIGEST = 32
_LENGTH = struct.Struct("<Q")
_OVERHEAD = len(MAGIC) + _LENGTH.size + _DIGEST
_CHUNK = 1 << 20        # bytes hashed at a time by the verifying pass
_MAX_DEPTH = 64         # nesting allowed in a saved optimizer state
_STALE_AGE_S = 3600     # a temporary file unmodified for this long is a leftover
_TMP_SUFFIX = ".fastopt-tmp"
_TMP_NAME = re.compile(r"\.([0-9a-f]{16})\.([0-9a-f]{8})\.([0-9]{1,10})\.[0-9a-f]{8}"
                       + re.escape(_TMP_SUFFIX) + r"\Z")
_KINDS = ("flat", "array", "dict", "list")
# What save writes (always little-endian) and what load reads (either order).
_CODES = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
_FILE_DTYPES = frozenset(np.dtype("<" + c).str for c in _CODES)
_READ_DTYPES = _FILE_DTYPES | frozenset(np.dtype(">" + c).str for c in _CODES)


class CheckpointError(ValueError):
    """The file is not a whole, intact fastopt checkpoint, or does not match."""


# --- arguments -----------------------------------------------------------------

def _fspath(path):
    """``path`` (str, bytes or os.PathLike) as a str."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}") from None
    if not path:
        raise ValueError("path is empty")
    return path


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


def _file_dtype(a):
    """The dtype ``a`` is stored as (little-endian), or None if it cannot be."""
    dtype = a.dtype.newbyteorder("<")
    return dtype if dtype.str in _FILE_DTYPES and not a.dtype.hasobject else None


def _check_arrays(named):
    for name, a in named:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy.ndarray (checkpoints hold host "
                            f"arrays), got {type(a).__name__}")
        if _file_dtype(a) is None:
            raise TypeError(f"params[{name!r}] has dtype {a.dtype}; checkpoints hold float16/32/64 "
                            "and integer arrays")


def _address(a):
    return a.__array_interface__["data"][0]


def _optimizer_map(optimizer, kind, named):
    """Which params each of ``optimizer``'s parameters is: ``[[index, offset, size]]``
    (``offset`` and ``size`` in elements); ValueError if one is none of them."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    found = []
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


# --- the optimizer state ---------------------------------------------------------

def _encode(value, arrays):
    """JSON-ready form of a state-dict value; arrays go to ``arrays``."""
    if isinstance(value, np.ndarray):
        if _file_dtype(value) is None:
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


def _decode(value, arrays, used, depth=0):
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
        out = {}
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


# --- saving ---------------------------------------------------------------------

def save(path, params, optimizer=None):
    """Write ``params`` (and ``optimizer``'s state) to ``path`` atomically.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file to write (replaced whole; a symbolic link's target is).
    params : list, tuple or dict of numpy.ndarray, FlatParams or numpy.ndarray
    optimizer : fastopt.Optimizer, optional
        An optimizer whose parameters are among ``params``.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, an optimizer that does not train ``params``; nothing
        is written.
    OSError
        The file could not be written; ``path`` is as it was.
    """
    path = _fspath(path)
    kind, named = _named_params(params)
    _check_arrays(named)
    header = {"params": {"kind": kind, "names": [n for n, _ in named]}}
    if kind == "flat":
        header["params"]["layout"] = [[n, list(params[n].shape)] for n in params]
    arrays = [a for _, a in named]
    if optimizer is not None:
        found = _optimizer_map(optimizer, kind, named)
        header["optimizer"] = {"class": type(optimizer).__name__, "params": found,
                               "state_dict": _encode(optimizer.state_dict(), arrays)}
    header["arrays"] = [{"dtype": _file_dtype(a).str, "shape": list(a.shape)} for a in arrays]
    blob = json.dumps(header).encode()

    target = os.path.realpath(path)  # a symbolic link stays, its target is replaced
    folder, name = os.path.split(target)
    if path.endswith((os.sep, os.altsep or os.sep)) or os.path.isdir(target):
        raise IsADirectoryError(f"path {path!r} is a folder")
    _remove_leftovers(folder, name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)  # replacing a file keeps its mode
    except OSError:
        mode = None
    tmp = os.path.join(folder, _temp_name(name, _host_tag(), os.getpid()))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            digest = hashlib.sha256()
            for chunk in (MAGIC, _LENGTH.pack(len(blob)), blob):
                f.write(chunk)
                digest.update(chunk)
            for a in arrays:
                # C order, little-endian; a copy only when ``a`` is not already so.
                raw = np.ascontiguousarray(a, dtype=_file_dtype(a)).reshape(-1).view(np.uint8)
                f.write(raw)
                digest.update(raw)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _target_tag(name):
    """16 hex digits naming the file ``name`` in temporary names."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _temp_name(name, host, pid):
    """A new temporary name for a save to ``name`` by process ``pid`` on ``host``
    (``.<target>.<host>.<pid>.<random>.fastopt-tmp``, under 60 characters)."""
    return f".{_target_tag(name)}.{host}.{pid}.{secrets.token_hex(4)}{_TMP_SUFFIX}"


def _host_tag():
    """8 hex digits naming this host and PID namespace (where PIDs mean the same)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError, NotImplementedError):
        namespace = ""
    who = f"{socket.gethostname()}\0{namespace}".encode(errors="surrogateescape")
    return hashlib.sha256(who).hexdigest()[:8]


def _pid_alive(pid):
    """Whether process ``pid`` (here) exists: True, False, or None if unknown."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return None  # (on Windows os.kill(pid, 0) would send a signal)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    except (OSError, OverflowError):
        return None
    return True


def _remove_leftovers(folder, name):
    """Remove the temporary files of earlier saves to ``name`` whose writer is
    dead, or that nobody modified for ``_STALE_AGE_S`` (module docstring)."""
    tag, host = _target_tag(name), _host_tag()
    try:
        with os.scandir(folder) as entries:
            candidates = [(e, m) for e in entries for m in [_TMP_NAME.match(e.name)]
                          if m and m[1] == tag]
    except OSError:
        return
    for entry, m in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            alive = _pid_alive(int(m[3])) if m[2] == host else None
            if alive is False or (alive is None and time.time() - st.st_mtime > _STALE_AGE_S):
                os.unlink(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove: the save goes on


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


# --- loading --------------------------------------------------------------------

def _read_into(f, buffer):
    """Fill ``buffer`` from ``f``; False if the file ends first."""
    view = memoryview(buffer).cast("B")
    while view:
        n = f.readinto(view)
        if not n:
            return False
        view = view[n:]
    return True


def _take(f, n):
    """``n`` bytes of ``f`` (after pass 1, a short read means the file changed)."""
    data = bytearray(n)
    if not _read_into(f, data):
        raise CheckpointError("the file changed while being read")
    return bytes(data)


def _need(condition, what):
    if not condition:
        raise CheckpointError(f"malformed header: {what}")


def _is_shape(x):
    return (isinstance(x, list) and len(x) <= 64
            and all(type(d) is int and 0 <= d <= sys.maxsize for d in x))


def _check_header(header, data_size):
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
    specs, total = [], 0
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


def _read(path):
    """Verify the whole file, then read it: ``(header, arrays, optimizer state or None)``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    size = st.st_size
    with os.fdopen(fd, "rb") as f:
        magic = f.read(len(MAGIC))
        if not magic or magic != MAGIC[:len(magic)]:
            raise CheckpointError(f"{path}: not a fastopt checkpoint")
        if size < _OVERHEAD:
            raise CheckpointError(f"{path}: truncated ({size} bytes)")
        # Pass 1: the digest of everything before the last 32 bytes, in fixed memory.
        f.seek(0)
        digest, left = hashlib.sha256(), size - _DIGEST
        buffer = memoryview(bytearray(min(_CHUNK, left)))
        while left:
            piece = buffer[:min(len(buffer), left)]
            if not _read_into(f, piece):
                raise CheckpointError(f"{path}: truncated while being read")
            digest.update(piece)
            left -= len(piece)
        del buffer, piece
        stored = f.read(_DIGEST)
        if stored != digest.digest() or f.read(1):
            raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted, "
                                  "truncated or has trailing bytes")
        # Pass 2: the file is intact; parse, check, read, and hash it again.
        f.seek(len(MAGIC))
        digest = hashlib.sha256(MAGIC)
        try:
            head = _take(f, _LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > size - _OVERHEAD:
                raise CheckpointError(f"malformed header: length {length}")
            blob = _take(f, length)
            digest.update(head)
            digest.update(blob)
            try:
                header = json.loads(blob)
            except (ValueError, RecursionError) as e:
                raise CheckpointError(f"malformed header: not JSON ({str(e)[:80]})") from None
            specs = _check_header(header, size - _OVERHEAD - length)
            arrays = [np.empty(shape, dtype) for shape, dtype in specs]
            for a in arrays:
                raw = a.reshape(-1).view(np.uint8)
                if not _read_into(f, raw):
                    raise CheckpointError("the file changed while being read")
                digest.update(raw)
            if f.read(_DIGEST) != stored or digest.digest() != stored or f.read(1):
                raise CheckpointError("the file changed while being read")
            state = None
            if "optimizer" in header:
                first = len(header["params"]["names"])
                used = [None] * first + [False] * (len(arrays) - first)
                state = _decode(header["optimizer"]["state_dict"], arrays, used)
                if not all(used[first:]):
                    raise CheckpointError("malformed header: an array nothing refers to")
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    return header, arrays, state


def load(path, params, optimizer=None):
    """Load a checkpoint written by :func:`save` into ``params`` (and ``optimizer``).

    The file is verified whole, and checked against ``params`` and the
    optimizer, before anything is written; on any error nothing changes.

    Parameters
    ----------
    path : str, bytes or os.PathLike
    params : list, tuple or dict of numpy.ndarray, FlatParams or numpy.ndarray
        Arrays of the saved shapes and dtypes, overwritten with the saved values.
    optimizer : fastopt.Optimizer, optional
        An optimizer of the saved class whose parameters are among ``params``
        (as they were when saved); its state is replaced by the saved one.

    Raises
    ------
    CheckpointError
        The file is damaged or malformed, or does not match the arguments.
    TypeError, ValueError
        Bad arguments, an optimizer that does not train ``params``.
    """
    path = _fspath(path)
    kind, named = _named_params(params)
    _check_arrays(named)
    found = _optimizer_map(optimizer, kind, named) if optimizer is not None else None
    header, arrays, state = _read(path)
    saved = header["params"]
    if saved["kind"] != kind or saved["names"] != [n for n, _ in named]:
        raise CheckpointError(f"{path}: holds params {saved['kind']} {saved['names']}, "
                              f"but {kind} {[n for n, _ in named]} were given")
    if kind == "flat" and saved["layout"] != [[n, list(params[n].shape)] for n in params]:
        raise CheckpointError(f"{path}: the FlatParams layout differs from the saved one")
    for (name, a), src in zip(named, arrays):
        if a.shape != src.shape or _file_dtype(a) != _file_dtype(src):
            raise CheckpointError(f"{path}: params[{name!r}] is {a.dtype}{list(a.shape)}, "
                                  f"the checkpoint has {src.dtype}{list(src.shape)}")
        if not a.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only")
    if optimizer is not None:
        if state is None:
            raise CheckpointError(f"{path}: holds no optimizer state")
        saved = header["optimizer"]
        if saved["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{path}: holds {saved['class']} state, not {type(optimizer).__name__}")
        if saved.get("params", found) != found:
            raise CheckpointError(f"{path}: the saved optimizer trained params {saved['params']} "
                                  f"([index, offset, size]), the given one trains {found}")
        # load_state_dict checks everything before it changes anything.
        try:
            optimizer.load_state_dict(state)
        except (TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"{path}: the saved optimizer state does not fit: {e}") from e
    for (_, a), src in zip(named, arrays):
        a[...] = src
