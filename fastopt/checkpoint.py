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
(``_ckpt_files._STALE_AGE_S``). A writer on this host that is still
running keeps its file, however long it takes; a writer elsewhere that
wrote nothing for an hour loses it, and its ``save`` then fails with
``OSError``, leaving ``path`` as it was.

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

The parts: ``_ckpt_args`` checks the arguments, ``_ckpt_format`` holds the
layout and the header's encoding and checks, ``_ckpt_io`` writes and
verifies the bytes, and ``_ckpt_files`` replaces the file atomically and
removes leftovers.
"""

from __future__ import annotations

from ._ckpt_args import (ParamsArg, PathArg, _check_arrays, _flat_layout, _fspath, _named_params,
                         _optimizer_map)
from ._ckpt_files import _replace_atomically
from ._ckpt_format import MAGIC  # noqa: F401 (the file's first bytes, importable from here as before)
from ._ckpt_format import CheckpointError, OptimizerEntry, _encode_header, _file_dtype
from ._ckpt_io import _read, _write_body
from .flat import FlatParams
from .optimizers import Optimizer

__all__ = ["save", "load", "CheckpointError"]


def save(path: PathArg, params: ParamsArg, optimizer: Optimizer | None = None) -> None:
    """Write ``params`` (and ``optimizer``'s state) to ``path`` atomically.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file to write (replaced whole; a symbolic link's target is).
    params : list, tuple or dict of numpy.ndarray, FlatParams or numpy.ndarray
        The arrays to save, of any shape, of dtype float16/32/64 or a signed
        or unsigned integer. A dict's keys are saved as strings.
    optimizer : fastopt.Optimizer, optional
        An optimizer whose parameters are among ``params`` (or, for a
        FlatParams, its buffer or segments of it); its ``state_dict()`` is
        saved with them. A ``fastopt.distributed.ZeroOptimizer`` over
        ``params`` is saved collectively (every rank calls ``save``; rank 0
        writes the file a single process would).

    Raises
    ------
    TypeError, ValueError
        Bad arguments, an optimizer that does not train ``params``; nothing
        is written.
    IsADirectoryError
        ``path`` names a folder.
    OSError
        The file could not be written; ``path`` is as it was.

    See Also
    --------
    load : read the file back into arrays and an optimizer.
    """
    sharded = getattr(optimizer, "_checkpoint_save", None)
    if sharded is not None:  # a fastopt.distributed.ZeroOptimizer: collective
        return sharded(path, params)
    path = _fspath(path)
    kind, named = _named_params(params)
    _check_arrays(named)
    layout = _flat_layout(params) if isinstance(params, FlatParams) else None
    arrays = [a for _, a in named]
    entry: OptimizerEntry | None = None
    if optimizer is not None:
        found = _optimizer_map(optimizer, kind, named)
        entry = (type(optimizer).__name__, found, optimizer.state_dict())
    blob = _encode_header(kind, [n for n, _ in named], layout, arrays, entry)
    _replace_atomically(path, lambda f: _write_body(f, blob, arrays))


def load(path: PathArg, params: ParamsArg, optimizer: Optimizer | None = None) -> None:
    """Load a checkpoint written by :func:`save` into ``params`` (and ``optimizer``).

    The file is verified whole, and checked against ``params`` and the
    optimizer, before anything is written; on any error nothing changes.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        A file written by :func:`save`.
    params : list, tuple or dict of numpy.ndarray, FlatParams or numpy.ndarray
        Of the form saved (same names; a dict's in any order), arrays of the
        saved shapes and dtypes (either byte order), writeable; overwritten
        with the saved values.
    optimizer : fastopt.Optimizer, optional
        An optimizer of the saved class whose parameters are among ``params``
        (as they were when saved); its state is replaced by the saved one.

    Raises
    ------
    CheckpointError
        The file is damaged or malformed, or does not match the arguments.
    TypeError, ValueError
        Bad arguments, an optimizer that does not train ``params``, a
        read-only array.
    OSError
        The file is missing or cannot be read (as ``open()`` would raise).

    See Also
    --------
    save : write such a file.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastopt
    >>> w = np.ones(3, np.float32)
    >>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([np.ones(3, np.float32)])
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "run.ckpt")
    >>> fastopt.save(path, [w], opt)
    >>> w2 = np.zeros(3, np.float32)
    >>> opt2 = fastopt.SGD([w2], lr=0.1, momentum=0.9)
    >>> fastopt.load(path, [w2], opt2)
    >>> w2
    array([0.9, 0.9, 0.9], dtype=float32)
    >>> folder.cleanup()
    """
    sharded = getattr(optimizer, "_checkpoint_load", None)
    if sharded is not None:  # a fastopt.distributed.ZeroOptimizer: collective
        return sharded(path, params)
    path = _fspath(path)
    kind, named = _named_params(params)
    _check_arrays(named)
    header, arrays, state = _read(path)
    saved = header["params"]
    names = [n for n, _ in named]
    if (kind == "dict" and saved["kind"] == kind and sorted(saved["names"]) == sorted(names)
            and len(set(names)) == len(names)):  # a dict's entries are matched by name
        given = dict(named)
        named = [(n, given[n]) for n in saved["names"]]
    found = _optimizer_map(optimizer, kind, named) if optimizer is not None else None
    if saved["kind"] != kind or saved["names"] != [n for n, _ in named]:
        raise CheckpointError(f"{path}: holds params {saved['kind']} {saved['names']}, "
                              f"but {kind} {[n for n, _ in named]} were given")
    if isinstance(params, FlatParams) and saved["layout"] != _flat_layout(params):
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
