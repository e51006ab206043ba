"""Optimizer state sharded across processes over MPI (ZeRO stage 1).

Every rank of an MPI communicator holds the whole parameter vector (a
``FlatParams``) but only its own contiguous slice of the optimizer state, and
updates only that slice; with K ranks each holds at most ``ceil(P / K)``
elements of state instead of P. A step, called by every rank with its own
gradient in ``flat.grad_data``:

1. reduce-scatter the gradients (``MPI.SUM``): each rank receives the sum
   over ranks of its slice, and divides it by K (the rank-averaged gradient);
2. one small all-reduce of two flags: a bad argument, or (with
   ``check_finite``) a NaN or infinity in any rank's averaged slice, stops
   or skips the step on every rank alike;
3. the fused kernel steps the rank's slice (its own fastopt optimizer over
   the parts of the parameter groups that fall in it);
4. all-gather the updated slices, in place, into every rank's parameters.

Steps 1 and 4 move ``2 (K - 1) / K * P * itemsize`` bytes per rank, as one
all-reduce would. Communication uses ``mpi4py`` on the NumPy buffers (no
pickling); fastopt imports it only here, and ``import fastopt`` never does.
Install it with ``pip install "fastopt[mpi]"`` (``mpi4py`` and the ``mpich``
wheel, which brings ``mpiexec``) and run ``mpiexec -n 3 python train.py``.

Checkpoints: :meth:`ZeroOptimizer.state_dict` gathers the state into the
single-process layout (it loads into a plain optimizer over the whole
``FlatParams``, and into a ``ZeroOptimizer`` over any number of ranks);
:meth:`ZeroOptimizer.save` and :meth:`ZeroOptimizer.load` write and read
the file ``fastopt.save(path, flat, optimizer)`` would (rank 0 writes it);
:meth:`ZeroOptimizer.save_shards` writes one file per rank, without
gathering, which :meth:`ZeroOptimizer.load_shards` reads back at any number
of ranks.

Every collective call agrees first: a bad setup or argument on one rank
(different layouts or dtypes across ranks, a bad hyperparameter, a
damaged file) raises on every rank, the others naming the rank that failed,
instead of leaving them waiting forever.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from . import _checks as C
from . import _state_io
from . import _update as U
from .checkpoint import CheckpointError, load as _load_file, save as _save_file
from .flat import FlatParams, FlatSegment
from .optimizers import Optimizer

__all__ = ["ZeroOptimizer", "shard_bounds"]

_INSTALL = ('fastopt.distributed needs mpi4py and an MPI library: pip install "fastopt[mpi]" '
            "(mpi4py and the mpich wheel, which brings mpiexec), or pip install mpi4py "
            "against your cluster's MPI")

# Exceptions re-raised by type on the ranks where they did not happen.
_KINDS: dict[str, type[Exception]] = {k.__name__: k for k in (
    TypeError, ValueError, KeyError, OSError, FileNotFoundError, IsADirectoryError,
    PermissionError, ImportError, CheckpointError)}

_SHARD = re.compile(r"shard-(\d+)-of-(\d+)\.fastopt\Z")
_SHARD_FORMAT = "fastopt-zero-shard-1"


def _mpi() -> Any:
    """The ``mpi4py.MPI`` module, imported on first use."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from None
    return MPI


def shard_bounds(size: int, ranks: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` slice of ``size`` elements that each of ``ranks`` holds.

    Contiguous, in rank order, as equal as possible: the first
    ``size % ranks`` ranks hold one element more, none more than
    ``ceil(size / ranks)``.

    >>> shard_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(size, ranks)
    bounds, start = [], 0
    for r in range(ranks):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def _difference(descriptions: list[dict]) -> str:
    """Which field of the ranks' setups first differs, and how."""
    first = descriptions[0]
    for rank, d in enumerate(descriptions[1:], 1):
        for key in first:
            if d.get(key) != first.get(key):
                a, b = (json.dumps(x, default=repr)[:200] for x in (first[key], d.get(key)))
                return f"rank 0's {key} is {a}, rank {rank}'s is {b}"
    return "they hash differently"


class _FullLayout:
    """The whole-buffer optimizer a state dict in the single-process layout is
    checked against: the user's parameter groups, the class's spec and hooks."""

    def __init__(self, zero: ZeroOptimizer) -> None:
        self.param_groups = zero.param_groups
        self.spec = zero.spec
        self._cls = zero.optimizer_class

    def _required_state(self, state: dict, hyper: dict) -> Any:
        required: Callable[..., Any] = self._cls._required_state  # the hook reads only .spec
        return required(self, state, hyper)


class ZeroOptimizer:
    """A fastopt optimizer whose state is sharded across the ranks of ``comm``.

    Each rank holds ``flat`` whole, and the state of its slice
    ``flat.data[shard[0]:shard[1]]`` only (see :func:`shard_bounds`). After
    every step, all ranks' parameters are bitwise identical, and equal to
    those of one process stepping the rank-averaged gradient (the sum in
    rank order, divided by K): bitwise with 1 or 2 ranks, to the rounding of
    the reduction's order with more.

    Construction, :meth:`step`, the state dicts and checkpoints are
    collective: every rank of ``comm`` calls them, in the same order.

    Parameters
    ----------
    optimizer_class : type
        A fastopt optimizer class (``fastopt.Adam``, ``AdamW``, ``SGD``,
        ``Adagrad``); each rank runs one over its slice (``.optimizer``).
    flat : FlatParams
        The parameters, on the host, with the same layout and dtype on
        every rank. Each rank writes its own gradient into
        ``flat.grad_data`` before :meth:`step`.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    groups : list of dict, optional
        Parameter groups, as the optimizer classes take them: each a dict
        with ``"params"`` (a segment of ``flat`` from ``flat.segment(...)``,
        ``flat`` itself, or a list of them) and optional hyperparameters.
        Default: one group holding ``flat``.
    target : None, "serial" or "parallel"
        The kernel (None: chosen by the slice's size).
    **hyperparameters
        The optimizer's hyperparameters (its defaults for those not given).

    Attributes
    ----------
    optimizer : fastopt.Optimizer or None
        This rank's optimizer over its slice; None where the slice holds no
        parameter of any group (more ranks than elements, say).
    param_groups : list of dict
        The groups over the whole buffer; hyperparameters changed here (a
        learning-rate schedule) apply from the next step. Every rank must
        make the same changes.
    rank, size : int
        This rank, and K.
    shard : tuple of int
        This rank's ``[start, stop)`` of the buffer.

    Raises
    ------
    ImportError
        mpi4py is missing (the message says what to install).
    TypeError, ValueError
        A bad argument on any rank, or ranks whose setups differ (layout,
        dtype, class, groups, hyperparameters), raise on every rank.

    Examples
    --------
    Run with ``mpiexec -n 2 python train.py``::

        flat = fastopt.FlatParams({"w": (784, 256), "b": 256})
        zero = ZeroOptimizer(fastopt.Adam, flat, lr=1e-3)
        for batch in my_shard_of_the_data:
            flat.grad_data[:] = gradient(flat, batch)  # this rank's gradient
            zero.step()                               # same parameters everywhere
    """

    def __init__(self, optimizer_class: type[Optimizer], flat: FlatParams, comm: Any = None, *,
                 groups: Sequence[dict[str, Any]] | None = None, target: str | None = None,
                 **hyperparameters: Any) -> None:
        comm = _check_comm(_mpi(), comm)
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        setup = _attempt(comm, "ZeroOptimizer()", lambda: self._setup(
            optimizer_class, flat, groups, target, hyperparameters))
        layout_hash, description = setup
        hashes = comm.allgather(layout_hash)
        if len(set(hashes)) > 1:
            descriptions = comm.allgather(description)
            raise ValueError("ZeroOptimizer(): the ranks' setups differ (every rank must pass "
                             f"the same FlatParams layout, dtype, class, groups and "
                             f"hyperparameters): {_difference(descriptions)}")
        self._layout_hash = _digest({k: description[k] for k in _LAYOUT_KEYS})
        self.optimizer: Optimizer | None = _attempt(comm, "ZeroOptimizer()", self._local_optimizer)

    def _setup(self, cls: Any, flat: Any, groups: Any, target: Any, hyper: dict) -> tuple:
        """Check the arguments; set the user-level groups; describe the setup."""
        if not (isinstance(cls, type) and issubclass(cls, Optimizer) and hasattr(cls, "spec")):
            raise TypeError("optimizer_class must be a fastopt optimizer class (fastopt.Adam, "
                            f"AdamW, SGD or Adagrad), got {cls!r}")
        if not isinstance(flat, FlatParams):
            raise TypeError(f"flat must be a fastopt.FlatParams, got {type(flat).__name__}")
        if flat.device != "cpu":
            raise ValueError("ZeroOptimizer steps host FlatParams only (device='cpu'): GPU "
                             "buffers are not supported yet, and would need a CUDA-aware MPI "
                             "build, which the mpich wheel is not")
        self.target = C.check_target(target)
        if self.target == "cuda":
            raise ValueError("target='cuda' needs GPU buffers, which ZeroOptimizer does not take")
        spec = cls.spec
        try:
            bound = inspect.Signature(spec.parameters()).bind(**hyper)
        except TypeError as e:
            raise TypeError(f"ZeroOptimizer({cls.__name__}): {e}") from None
        self.optimizer_class, self.spec, self.flat = cls, spec, flat
        self.defaults = {**spec.defaults, **bound.arguments}
        spans: list[tuple[int, int]] = []
        self.param_groups: list[dict[str, Any]] = []
        self._group_of: list[int] = []
        for k, group in enumerate([{"params": flat}] if groups is None else _group_list(groups)):
            where = f"groups[{k}]"
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{where} must be a dict with 'params'")
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} in {where}")
            ps = group["params"]
            ps = list(ps) if isinstance(ps, (list, tuple)) else [ps]
            if not ps:
                raise ValueError(f"{where} has an empty 'params' list")
            views = []
            for j, p in enumerate(ps):
                a, b = _span(f"{where}['params'][{j}]", flat, p)
                spans.append((a, b))
                self._group_of.append(k)
                views.append(flat.data[a:b])
            values = {**self.defaults, **{key: v for key, v in group.items() if key != "params"}}
            try:
                values.update(spec.check(values))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}: {e}") from None
            self.param_groups.append({**values, "params": views})
        ordered = sorted(spans)
        for (a, b), (c, d) in zip(ordered, ordered[1:]):
            if c < b:
                raise ValueError(f"parameters overlap: elements [{a}, {b}) and [{c}, {d}) of the "
                                 "buffer are in two groups (or twice in one)")
        self._spans = spans
        self._bounds = shard_bounds(flat.data.size, self.size)
        self.shard: tuple[int, int] = self._bounds[self.rank]
        self._counts = [b - a for a, b in self._bounds]
        self._displs = [a for a, _ in self._bounds]
        self._mpi_type = _mpi().FLOAT if flat.dtype == np.float32 else _mpi().DOUBLE
        description = {
            "class": cls.__name__, "dtype": str(flat.dtype), "size": int(flat.data.size),
            "entries": [[n, list(flat[n].shape)] for n in flat], "params": spans,
            "groups": [sorted((key, repr(v)) for key, v in _hyper(g).items())
                       for g in self.param_groups],
            "target": self.target}
        return _digest(description), description

    def _local_optimizer(self) -> Optimizer | None:
        """This rank's optimizer over the parts of the groups in its slice."""
        lo, hi = self.shard
        flat = self.flat
        # This rank's slice of the averaged gradient (one rank: the gradient itself).
        self._grad = flat.grad_data if self.size == 1 else np.zeros(hi - lo, flat.dtype)
        self._local: list[tuple[int, int, int]] = []  # (user param, offset in it, length)
        self._local_groups: list[int] = []
        local_groups, grads = [], []
        for k, group in enumerate(self.param_groups):
            params = []
            for i, (a, b) in enumerate(self._spans):
                s, e = max(a, lo), min(b, hi)
                if self._group_of[i] != k or s >= e:
                    continue
                self._local.append((i, s - a, e - s))
                params.append(flat.data[s:e])
                grads.append(self._grad[s - lo:e - lo])
            if params:
                self._local_groups.append(k)
                local_groups.append({**_hyper(group), "params": params})
        self._local_grads = grads
        if not local_groups:
            return None
        return self.optimizer_class(local_groups, target=self.target)

    # --- stepping ------------------------------------------------------------

    def step(self, *, check_finite: bool = False, grad_scale: float | None = None) -> bool | None:
        """One step from every rank's ``flat.grad_data`` (collective).

        Parameters
        ----------
        check_finite : bool
            If the averaged gradient (times ``1 / grad_scale``) has a NaN or
            an infinity anywhere, on any rank's slice, skip the step on every
            rank: parameters, state and step counts untouched.
        grad_scale : float, optional
            Divide the averaged gradient by it, fused into the step.

        Returns
        -------
        bool or None
            With ``check_finite``, whether the step was taken; else None.

        Raises
        ------
        TypeError, ValueError
            A bad argument or hyperparameter on any rank raises on every
            rank, before anything changes.
        """
        MPI = _mpi()
        comm, K = self.comm, self.size
        error = None
        try:
            check_finite = C.check_flag("check_finite", check_finite)
            inv_scale = C.check_grad_scale(grad_scale, {self.flat.dtype})
            hypers = self._checked_hypers()
        except Exception as e:
            error = e
        if K > 1:
            comm.Reduce_scatter(self.flat.grad_data, self._grad, recvcounts=self._counts,
                                op=MPI.SUM)
            np.divide(self._grad, K, out=self._grad)
        flags = np.zeros(2, np.int32)
        flags[0] = error is not None
        if check_finite and error is None and self._grad.size:
            flags[1] = U.any_nonfinite([self._grad], inv_scale, self.target)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        if flags[0]:
            _agree(comm, error, "ZeroOptimizer.step()")
        if flags[1]:
            return False
        if self.optimizer is not None:
            for j, k in enumerate(self._local_groups):
                self.optimizer.param_groups[j].update(hypers[k])
            self.optimizer.step(self._local_grads, grad_scale=grad_scale)
        self._allgather()
        return True if check_finite else None

    def _allgather(self) -> None:
        """Every rank's slice of the parameters, into every rank's ``flat.data``, in place."""
        self.comm.Allgatherv(_mpi().IN_PLACE,
                             [self.flat.data, self._counts, self._displs, self._mpi_type])

    def _checked_hypers(self) -> list[dict[str, Any]]:
        """Every group's hyperparameters, checked (``param_groups`` may have been edited)."""
        hypers = []
        for k, group in enumerate(self.param_groups):
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"param_groups[{k}] has unknown hyperparameter(s) {sorted(unknown)}")
            try:
                hypers.append(self.spec.check(group))
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{k}]: {e}") from None
        return hypers

    def zero_grad(self) -> None:
        """Set this rank's gradient buffer to zero (local; not collective)."""
        self.flat.zero_grad()

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds (its slice's arrays)."""
        if self.optimizer is None:
            return 0
        return sum(a.nbytes for s in self.optimizer.state.values() for a in s.values()
                   if isinstance(a, np.ndarray))

    # --- state dicts ---------------------------------------------------------

    def _meta(self, what: str) -> dict[str, Any]:
        """Collective: the groups' hyperparameters (checked) and, per parameter
        of the whole layout with state, ``[step, keys]``; the same on every rank."""
        groups = _attempt(self.comm, what, self._checked_hypers)
        mine: dict[int, tuple | None] = {}  # a parameter has one piece per rank at most
        opt = self.optimizer
        for j, (i, _, _) in enumerate(self._local):
            s = opt.state.get(j) if opt is not None else None
            mine[i] = None if s is None else (s.get("step"), sorted(k for k in s if k != "step"))
        per_rank = self.comm.allgather(mine)
        state: dict[int, list] = {}
        for i in range(len(self._spans)):
            entries = {repr(m[i]) for m in per_rank if i in m}
            seen = [m[i] for m in per_rank if i in m]
            if len(entries) > 1:
                raise ValueError(f"the state of parameter {i} differs across its slices "
                                 f"({sorted(entries)}): were the ranks stepped alike?")
            if seen and seen[0] is not None:
                state[i] = list(seen[0])
        return {"groups": groups, "state": state}

    def _slice_of(self, key: str, arrays: Callable[[int], Any]) -> np.ndarray:
        """This rank's slice of state ``key``: the local parameters' arrays
        (``arrays(j)``, or None where absent) at their places; zeros elsewhere."""
        lo = self.shard[0]
        out = np.zeros(self.shard[1] - lo, self.flat.dtype)
        for j, (i, off, n) in enumerate(self._local):
            a = arrays(j)
            if a is not None:
                start = self._spans[i][0] + off - lo
                out[start:start + n] = a
        return out

    def _place(self, key: str, state: dict[int, dict[str, Any]], lo: int, hi: int) -> np.ndarray:
        """Elements ``[lo, hi)`` of the buffer, holding state ``key`` of each
        parameter of the whole layout (``state``: index -> its state) that has it."""
        out = np.zeros(hi - lo, self.flat.dtype)
        for i, s in state.items():
            a, b = self._spans[i]
            start, stop = max(a, lo), min(b, hi)
            if key in s and start < stop:
                out[start - lo:stop - lo] = np.ravel(s[key])[start - a:stop - a]
        return out

    def _keys(self, meta: dict) -> list[str]:
        return sorted({k for _, keys in meta["state"].values() for k in keys})

    def state_dict(self, root: int | None = None) -> dict[str, Any] | None:
        """The whole state, gathered, in the single-process layout (collective).

        As ``optimizer_class(groups over flat).state_dict()`` would give it:
        it loads into such a plain optimizer, and into a ``ZeroOptimizer``
        over any number of ranks. The arrays are copies.

        Parameters
        ----------
        root : int, optional
            Gather on this rank only (the others get None); default: on every rank.
        """
        comm = self.comm
        if root is not None:
            self._check_root("state_dict()", root)
        meta = self._meta("state_dict()")
        full: dict[str, np.ndarray] = {}
        opt = self.optimizer
        for key in self._keys(meta):
            send = self._slice_of(key, lambda j: opt.state.get(j, {}).get(key) if opt else None)
            mine = root is None or self.rank == root
            recv = np.empty(self.flat.data.size, self.flat.dtype) if mine else None
            spec = [recv, self._counts, self._displs, self._mpi_type]
            if root is None:
                comm.Allgatherv(send, spec)
            else:
                comm.Gatherv(send, spec if mine else None, root=root)
            if recv is not None:
                full[key] = recv
        if root is not None and self.rank != root:
            return None
        state = {}
        for i, (step, keys) in meta["state"].items():
            a, b = self._spans[i]
            entry: dict[str, Any] = {key: full[key][a:b] for key in keys}
            if step is not None:
                entry = {"step": step, **entry}
            state[i] = entry
        groups, first = [], 0
        for k, group in enumerate(self.param_groups):
            n = len(group["params"])
            groups.append({**meta["groups"][k], "params": list(range(first, first + n))})
            first += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any] | None, root: int | None = None) -> None:
        """Load a state dict in the single-process layout (collective).

        From :meth:`state_dict`, or a plain optimizer's over the same groups
        of the whole ``flat``, saved at any number of ranks. Checked whole
        before anything changes, on every rank.

        Parameters
        ----------
        state_dict : dict or None
            The state dict (None on ranks other than ``root``).
        root : int, optional
            The rank that holds ``state_dict`` and sends each rank its slice;
            default: every rank holds it.
        """
        comm = self.comm
        views = [p for g in self.param_groups for p in g["params"]]

        def parse() -> tuple[dict, dict]:
            new_groups, new_state = _state_io.parse(_FullLayout(self), state_dict, views)
            meta = {"groups": [_hyper(g) for g in new_groups],
                    "state": {i: [s.get("step"), sorted(k for k in s if k != "step")]
                              for i, s in new_state.items()}}
            return meta, new_state

        if root is None:
            meta, new_state = _attempt(comm, "load_state_dict()", parse)
            slices = {key: self._place(key, new_state, *self.shard) for key in self._keys(meta)}
        else:
            self._check_root("load_state_dict()", root)
            parsed = _from_root(comm, root, "load_state_dict()", parse)
            meta = comm.bcast(parsed[0] if self.rank == root else None, root=root)
            slices = {}
            for key in self._keys(meta):
                whole = None
                if self.rank == root:
                    whole = [self._place(key, parsed[1], 0, self.flat.data.size), self._counts,
                             self._displs, self._mpi_type]
                slices[key] = np.empty(self._counts[self.rank], self.flat.dtype)
                comm.Scatterv(whole, slices[key], root=root)
        self._install(meta, slices, "load_state_dict()")

    def _install(self, meta: dict, slices: dict[str, np.ndarray], what: str,
                 params: np.ndarray | None = None) -> None:
        """Collective: make ``meta`` (groups, per-parameter step and keys) and
        this rank's ``slices`` of each state key the state, and ``params``
        (this rank's slice of the parameters) the parameters; checked on every
        rank before anything changes."""
        lo = self.shard[0]
        state: dict[int, dict[str, Any]] = {}
        for j, (i, off, n) in enumerate(self._local):
            entry = meta["state"].get(i)
            if entry is None:
                continue
            step, keys = entry
            start = self._spans[i][0] + off - lo
            s: dict[str, Any] = {} if step is None else {"step": step}
            for key in keys:
                s[key] = slices[key][start:start + n]
            state[j] = s
        local = {"state": state, "param_groups": [
            {**meta["groups"][k], "params": [j for j, (i, _, _) in enumerate(self._local)
                                             if self._group_of[i] == k]}
            for k in self._local_groups]}

        def check() -> None:
            if len(meta["groups"]) != len(self.param_groups):
                raise ValueError(f"the saved state has {len(meta['groups'])} parameter groups, "
                                 f"this optimizer has {len(self.param_groups)}")
            for k, g in enumerate(meta["groups"]):
                self.spec.check(self._merged(k, g))
            if self.optimizer is not None:
                views = [p for g in self.optimizer.param_groups for p in g["params"]]
                _state_io.parse(self.optimizer, local, views)

        _attempt(self.comm, what, check)
        # Everything is checked on every rank: commit.
        if self.optimizer is not None:
            self.optimizer.load_state_dict(local)
        for k, g in enumerate(meta["groups"]):
            self.param_groups[k].update(self.spec.check(self._merged(k, g)))
        if params is not None:
            self.flat.data[lo:self.shard[1]] = params
            self._allgather()

    def _check_root(self, what: str, root: Any) -> None:
        """Collective: ``root`` is a rank, the same on every rank."""
        _attempt(self.comm, what, lambda: _check_rank("root", root, self.size))
        roots = self.comm.allgather(int(root))
        if len(set(roots)) > 1:
            raise ValueError(f"{what}: the ranks passed different roots {roots}")

    def _merged(self, k: int, saved: dict) -> dict[str, Any]:
        """Group ``k`` with the saved hyperparameters (not the pinned ones) over it."""
        return {**self.param_groups[k], **{key: v for key, v in saved.items()
                                           if key in self.spec.defaults
                                           and key not in self.spec.pinned}}

    # --- checkpoint files ------------------------------------------------------

    def _plain(self, flat: FlatParams) -> Optimizer:
        """A single-process optimizer of this class over the same groups of ``flat``."""
        return self.optimizer_class([
            {**_hyper(g), "params": [flat.data[a:b] for i, (a, b) in enumerate(self._spans)
                                     if self._group_of[i] == k]}
            for k, g in enumerate(self.param_groups)], target=self.target)

    def _twin(self) -> FlatParams:
        """A FlatParams with ``flat``'s layout and dtype (zeros)."""
        return FlatParams({n: self.flat[n].shape for n in self.flat}, dtype=self.flat.dtype)

    def _checkpoint_save(self, path: Any, params: Any) -> None:
        """``fastopt.save(path, flat, zero)``: :meth:`save`, for this ``flat`` only."""
        self._check_params_arg("fastopt.save", params)
        self.save(path)

    def _checkpoint_load(self, path: Any, params: Any) -> None:
        """``fastopt.load(path, flat, zero)``: :meth:`load`, for this ``flat`` only."""
        self._check_params_arg("fastopt.load", params)
        self.load(path)

    def _check_params_arg(self, fn: str, params: Any) -> None:
        """Collective: ``params`` is this ``flat`` on every rank, else all raise."""
        def check() -> None:
            if params is not self.flat:
                raise ValueError(f"{fn}(path, params, zero): params must be the FlatParams "
                                 "the ZeroOptimizer was built over")
        _attempt(self.comm, fn, check)

    def save(self, path: Any, root: int = 0) -> None:
        """Write the parameters and the whole state to ``path`` (collective).

        Rank ``root`` writes, atomically, the file that
        ``fastopt.save(path, flat, plain)`` writes for a plain optimizer
        ``plain`` of this class over the same groups of ``flat``: a single
        process loads it with ``fastopt.load``, and :meth:`load` reads it at
        any number of ranks. A failure (``OSError``) raises on every rank.
        """
        self._check_root("save()", root)
        state = self.state_dict(root=root)

        def write() -> None:
            twin = self._twin()
            twin.data[:] = self.flat.data
            plain = self._plain(twin)
            assert state is not None  # gathered on this rank
            plain.load_state_dict(state)
            _save_file(path, twin, plain)

        _from_root(self.comm, root, "save()", write)

    def load(self, path: Any, root: int = 0) -> None:
        """Read a file from :meth:`save` (or ``fastopt.save`` with a plain
        optimizer over the same groups of a FlatParams of this layout), saved
        at any number of ranks (collective). Rank ``root`` reads it; on any
        error every rank raises and nothing changes."""
        self._check_root("load()", root)

        def read() -> tuple[dict, FlatParams]:
            twin = self._twin()
            plain = self._plain(twin)
            _load_file(path, twin, plain)
            return plain.state_dict(), twin

        state, twin = _from_root(self.comm, root, "load()", read) or (None, None)
        self.load_state_dict(state, root=root)
        # The state is loaded on every rank: now the parameters.
        if twin is not None:
            self.flat.data[:] = twin.data
        self.comm.Bcast([self.flat.data, self._mpi_type], root=root)

    def save_shards(self, directory: Any) -> None:
        """Each rank writes its slice of the parameters and state to
        ``directory/shard-<rank>-of-<K>.fastopt`` (collective, nothing gathered;
        ``directory`` is created if missing).

        Each file is a fastopt checkpoint, written atomically; shards of
        another K in ``directory`` are removed once all are written.
        :meth:`load_shards` reads them back at any number of ranks.
        """
        directory = os.fsdecode(os.fspath(directory))
        meta = self._meta("save_shards()")
        save_id = self.comm.bcast(uuid.uuid4().hex if self.rank == 0 else None, root=0)
        lo, hi = self.shard
        opt = self.optimizer
        arrays: dict[str, np.ndarray] = {"params": self.flat.data[lo:hi]}
        for key in self._keys(meta):
            arrays["state." + key] = self._slice_of(
                key, lambda j: opt.state.get(j, {}).get(key) if opt else None)
        header = {"format": _SHARD_FORMAT, "save_id": save_id, "rank": self.rank,
                  "ranks": self.size, "size": int(self.flat.data.size), "bounds": [lo, hi],
                  "layout": self._layout_hash, "class": self.optimizer_class.__name__,
                  "meta": meta}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8).copy()
        name = os.path.join(directory, f"shard-{self.rank}-of-{self.size}.fastopt")

        def write() -> None:
            os.makedirs(directory, exist_ok=True)
            _save_file(name, arrays)

        _attempt(self.comm, "save_shards()", write)

        def tidy() -> None:
            for entry in os.listdir(directory):
                m = _SHARD.match(entry)
                if m and int(m.group(2)) != self.size:
                    os.remove(os.path.join(directory, entry))

        _from_root(self.comm, 0, "save_shards()", tidy)

    def load_shards(self, directory: Any) -> None:
        """Read the shards :meth:`save_shards` wrote, at any number of ranks
        then (collective). Each rank reads the files overlapping its slice;
        every file is verified, and every rank raises, with nothing changed,
        on a missing, damaged or mismatched shard."""
        directory = os.fsdecode(os.fspath(directory))

        def listing() -> int:
            found: dict[int, set[int]] = {}
            for entry in os.listdir(directory):
                m = _SHARD.match(entry)
                if m:
                    found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
            if not found:
                raise FileNotFoundError(f"{directory}: holds no shard-<rank>-of-<K>.fastopt files")
            if len(found) > 1:
                raise CheckpointError(f"{directory}: holds shards of several saves "
                                      f"(K = {sorted(found)})")
            (ranks, present), = found.items()
            missing = sorted(set(range(ranks)) - present)
            if missing:
                raise CheckpointError(f"{directory}: shards {missing} of {ranks} are missing")
            return ranks

        saved_ranks = _from_root(self.comm, 0, "load_shards()", listing, share=True)
        lo, hi = self.shard

        def read() -> tuple[str, dict, dict, np.ndarray]:
            from ._ckpt_io import _read
            size = self.flat.data.size
            old = shard_bounds(size, saved_ranks)
            params = np.empty(hi - lo, self.flat.dtype)
            slices: dict[str, np.ndarray] = {}
            save_id, meta = None, None
            for r, (a, b) in enumerate(old):
                if (b <= lo or a >= hi) and not (r == 0 and lo == hi):
                    continue
                name = os.path.join(directory, f"shard-{r}-of-{saved_ranks}.fastopt")
                header, arrays, _ = _read(name)
                named = dict(zip(header["params"]["names"], arrays))
                try:
                    info = json.loads(bytes(named.pop("header")))
                    ok = (info["format"] == _SHARD_FORMAT and info["rank"] == r
                          and info["ranks"] == saved_ranks and info["bounds"] == [a, b])
                except (KeyError, ValueError, TypeError):
                    ok = False
                if not ok:
                    raise CheckpointError(f"{name}: not a shard {r} of {saved_ranks} "
                                          "written by save_shards()")
                if info["size"] != size or info["layout"] != self._layout_hash:
                    raise CheckpointError(f"{name}: saved for another layout (a FlatParams of "
                                          f"{info['size']} elements, or other groups or dtype)")
                if info["class"] != self.optimizer_class.__name__:
                    raise CheckpointError(f"{name}: holds {info['class']} state, not "
                                          f"{self.optimizer_class.__name__}")
                if save_id is None:
                    save_id, meta = info["save_id"], info["meta"]
                elif info["save_id"] != save_id:
                    raise CheckpointError(f"{directory}: the shards come from different saves")
                s, e = max(a, lo), min(b, hi)
                for key, array in named.items():
                    if array.shape != (b - a,) or array.dtype != self.flat.dtype:
                        raise CheckpointError(f"{name}: {key} is {array.dtype}{list(array.shape)}")
                    target = params if key == "params" else slices.setdefault(
                        key[len("state."):], np.zeros(hi - lo, self.flat.dtype))
                    target[s - lo:e - lo] = array[s - a:e - a]
            assert meta is not None and save_id is not None
            meta = {"groups": meta["groups"],
                    "state": {int(i): v for i, v in meta["state"].items()}}
            return save_id, meta, slices, params

        save_id, meta, slices, params = _attempt(self.comm, "load_shards()", read)
        if len(set(self.comm.allgather(save_id))) > 1:
            raise CheckpointError(f"{directory}: the shards come from different saves")
        self._install(meta, slices, "load_shards()", params=params)

    def __repr__(self) -> str:
        lo, hi = self.shard
        return (f"ZeroOptimizer({self.optimizer_class.__name__}, rank {self.rank} of {self.size}, "
                f"elements [{lo}, {hi}) of {self.flat.data.size})")


# What the layout hash of a shard covers (not the hyperparameters, which a
# loaded state replaces).
_LAYOUT_KEYS = ("class", "dtype", "size", "entries", "params")


def _check_rank(name: str, rank: Any, size: int) -> None:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < size:
        raise ValueError(f"{name} must be a rank in [0, {size}), got {rank!r}")


def _group_list(groups: Any) -> list:
    if isinstance(groups, dict) or not isinstance(groups, (list, tuple)):
        raise TypeError(f"groups must be a list of parameter-group dicts, got {type(groups).__name__}")
    if not groups:
        raise ValueError("groups is empty")
    return list(groups)


def _hyper(group: dict) -> dict[str, Any]:
    """A group's hyperparameters (everything but its parameters)."""
    return {k: v for k, v in group.items() if k != "params"}


def _span(name: str, flat: FlatParams, p: Any) -> tuple[int, int]:
    """Where parameter ``p`` (``flat`` or a segment of it) lies in ``flat``'s buffer."""
    if p is flat:
        return 0, flat.data.size
    if not isinstance(p, FlatSegment):
        raise TypeError(f"{name} must be flat or a segment of it (flat.segment(...)), "
                        f"got {type(p).__name__}")
    base = flat.data.__array_interface__["data"][0]
    if not isinstance(p.data, np.ndarray):
        raise TypeError(f"{name} is a GPU segment; ZeroOptimizer takes host FlatParams")
    start, rem = divmod(p.data.__array_interface__["data"][0] - base, flat.data.itemsize)
    if (rem or start < 0 or start + p.data.size > flat.data.size or p.data.dtype != flat.dtype
            or not np.shares_memory(p.data, flat.data) and p.data.size):
        raise ValueError(f"{name} is a segment of another FlatParams, not of flat")
    return start, start + p.data.size
