"""A ``ZeroOptimizer``'s construction (arguments checked and agreed, this
rank's optimizer over its slice) and its step (reduce-scatter, one agreed
flag all-reduce, the fused kernel, all-gather)."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np

from .. import _checks as C
from .. import _spec
from .. import _update as U
from ..flat import FlatParams
from ..optimizers import Optimizer
from ._collectives import _agree, _attempt, _check_comm, _mpi
from ._layout import _LAYOUT_KEYS, _difference, _digest, _group_list, _hyper, _span, shard_bounds


def _full_precision(group: dict, where: str) -> None:
    """ZeroOptimizer's state is sharded and saved as float arrays: reduced-
    precision state (``state_dtype``) is refused, before it breaks a save
    or makes a rank's small slice keep float32 where one process would not."""
    state_dtype = group.get("state_dtype")
    if state_dtype not in (None, "float32", "float64"):
        raise ValueError(f"{where}: state_dtype={state_dtype!r} is not supported by "
                         "ZeroOptimizer (its sharded state is full precision); leave it None")


class _Stepping:
    """Construction and stepping of :class:`fastopt.distributed.ZeroOptimizer`."""

    @property
    def target(self) -> str | None:
        """Where the local kernels run (None, "serial" or "parallel"), as
        given to the constructor; fixed for the optimizer's life."""
        return self._target

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
        self._target = C.check_target(target)
        if self._target == "cuda":
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
            _spec.check_known(group, self.defaults, where)
            _full_precision({**self.defaults, **group}, where)
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
            A bad argument or hyperparameter on any rank, or arguments or
            hyperparameters that differ between ranks, raise on every rank,
            before anything changes.
        """
        MPI = _mpi()
        comm, K = self.comm, self.size
        error, digest = None, 0
        try:
            check_finite = C.check_flag("check_finite", check_finite)
            inv_scale = C.check_grad_scale(grad_scale, {self.flat.dtype})
            hypers = self._checked_hypers()
            # What every rank must agree on: each steps its own slice with them
            # (and a schedule's keys, which every rank's state dict carries).
            schedules = [_spec.schedule_keys(f"param_groups[{k}]", group)
                         for k, group in enumerate(self.param_groups)]
            digest = int(_digest([check_finite, inv_scale, hypers, schedules])[:15], 16)
            if self.optimizer is not None:
                # What the local step would refuse (its state edited on this
                # rank only): refused here, before any rank steps.
                self.optimizer._check_step(self._local_grads,
                                           [hypers[k] for k in self._local_groups])
        except Exception as e:
            error = e
        if K > 1:
            comm.Reduce_scatter(self.flat.grad_data, self._grad, recvcounts=self._counts,
                                op=MPI.SUM)
            np.divide(self._grad, K, out=self._grad)
        # One reduction: any error, any non-finite element, and the largest and
        # smallest digest (equal when the ranks agree).
        flags = np.array([error is not None, 0, digest, -digest], np.int64)
        if check_finite and error is None and self._grad.size:
            flags[1] = U.any_nonfinite([self._grad], inv_scale, self.target)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        if flags[0]:
            _agree(comm, error, "ZeroOptimizer.step()")
        if flags[2] != -flags[3]:
            raise ValueError("ZeroOptimizer.step(): the ranks passed different check_finite or "
                             "grad_scale, or hold different hyperparameters (or schedule "
                             "keys, initial_lr...) in param_groups "
                             "(every rank must make the same call with the same groups); "
                             "nothing was changed")
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
            try:
                _spec.check_known(group, self.defaults)
                hyper = self.spec.check(group)
                # refused here, on every rank, not by the local optimizer of
                # the ranks holding the group (the others would wait for ever)
                U.check_range(self.optimizer_class._RULE, hyper, self.flat.dtype, "the parameters")
                hypers.append(hyper)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{k}]: {e}") from None
            _full_precision(group, f"param_groups[{k}]")
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
