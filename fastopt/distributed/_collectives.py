"""Collective helpers of ``fastopt.distributed``: mpi4py imported on first use,
and calls that agree, so that an error on one rank raises on every rank."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..checkpoint import CheckpointError


_INSTALL = ('fastopt.distributed needs mpi4py and an MPI library: pip install "fastopt[mpi]" '
            "(mpi4py and the mpich wheel, which brings mpiexec), or pip install mpi4py "
            "against your cluster's MPI")

# Exceptions re-raised by type on the ranks where they did not happen.
_KINDS: dict[str, type[Exception]] = {k.__name__: k for k in (
    TypeError, ValueError, KeyError, OSError, FileNotFoundError, IsADirectoryError,
    NotADirectoryError, PermissionError, ImportError, CheckpointError)}


def _mpi() -> Any:
    """The ``mpi4py.MPI`` module, imported on first use."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from None
    return MPI


def _agree(comm: Any, error: BaseException | None, what: str) -> None:
    """Collective: raise on every rank if ``error`` happened on any.

    The rank that failed raises its own exception; the others raise one of
    the same type (RuntimeError for an unusual one) naming it.
    """
    errors = comm.allgather(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for rank, e in enumerate(errors):
        if e is not None:
            raise _KINDS.get(e[0], RuntimeError)(f"{what}: rank {rank} failed: {e[1]}")


def _attempt(comm: Any, what: str, work: Callable[[], Any]) -> Any:
    """Collective: ``work()`` on every rank, raising on all if it raised on any."""
    error, result = None, None
    try:
        result = work()
    except Exception as e:  # every failure must reach the other ranks
        error = e
    _agree(comm, error, what)
    return result


def _from_root(comm: Any, root: int, what: str, work: Callable[[], Any],
               share: bool = False) -> Any:
    """Collective: ``work()`` on rank ``root`` only; its exception raised on
    every rank (one broadcast). Returns its result on ``root`` (and, with
    ``share``, broadcast to every rank; else None elsewhere)."""
    outcome: Any = None
    error, result = None, None
    if comm.Get_rank() == root:
        try:
            result = work()
            outcome = ("ok", result if share else None)
        except Exception as e:
            error = e
            outcome = ("error", (type(e).__name__, str(e)))
    outcome = comm.bcast(outcome, root=root)
    if error is not None:
        raise error
    if outcome[0] == "error":
        kind, message = outcome[1]
        raise _KINDS.get(kind, RuntimeError)(f"{what}: rank {root} failed: {message}")
    return result if comm.Get_rank() == root else outcome[1]


def _check_comm(MPI: Any, comm: Any) -> Any:
    """``comm`` (None: ``MPI.COMM_WORLD``) checked to be a usable intracommunicator."""
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (MPI.Intracomm), "
                        f"got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL (a communicator of size 0): this process is in "
                         "no group to shard the optimizer across")
    if not isinstance(comm, MPI.Intracomm) or comm.Is_inter():
        raise TypeError("comm must be an intracommunicator (an intercommunicator joins two groups)")
    return comm


def _check_rank(name: str, rank: Any, size: int) -> None:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < size:
        raise ValueError(f"{name} must be a rank in [0, {size}), got {rank!r}")
