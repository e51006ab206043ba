"""A checkpoint's bytes: writing them, and reading them back verified.

:func:`_write_body` writes the layout of ``_ckpt_format`` to an open file;
:func:`_read` checks a whole file's digest in fixed memory before it parses
anything, then parses, checks and reads it, hashing it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from io import BufferedIOBase
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from ._ckpt_format import (_DIGEST, _LENGTH, _OVERHEAD, MAGIC, CheckpointError, _check_header,
                           _decode, _file_dtype)

_CHUNK = 1 << 20        # bytes hashed at a time by the verifying pass


def _write_body(f: BinaryIO, blob: bytes, arrays: list[NDArray[Any]]) -> None:
    """Write the header ``blob``, ``arrays`` and the digest to the binary file ``f``."""
    digest = hashlib.sha256()
    for chunk in (MAGIC, _LENGTH.pack(len(blob)), blob):
        f.write(chunk)
        digest.update(chunk)
    for a in arrays:
        # C order, little-endian; a copy only when ``a`` is not already so.
        raw = np.ascontiguousarray(a, dtype=_file_dtype(a)).reshape(-1).view(np.uint8).data
        f.write(raw)
        digest.update(raw)
    f.write(digest.digest())


def _read_into(f: BufferedIOBase, buffer: bytearray | memoryview) -> bool:
    """Fill ``buffer`` from ``f``; False if the file ends first."""
    view = memoryview(buffer).cast("B")
    while view:
        n = f.readinto(view)
        if not n:
            return False
        view = view[n:]
    return True


def _take(f: BufferedIOBase, n: int) -> bytes:
    """``n`` bytes of ``f`` (after pass 1, a short read means the file changed)."""
    data = bytearray(n)
    if not _read_into(f, data):
        raise CheckpointError("the file changed while being read")
    return bytes(data)


def _read(path: str) -> tuple[dict[str, Any], list[NDArray[Any]], Any]:
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
                raw = a.reshape(-1).view(np.uint8).data  # the bytes of a
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
