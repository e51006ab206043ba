"""A ``ZeroOptimizer``'s state dicts: gathered into the single-process layout,
and loaded (checked on every rank first) from it, at any number of ranks."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

from .. import _spec, _state_io
from ._collectives import _attempt, _check_rank, _from_root
from ._layout import _digest, _hyper
from ._step import _Stepping


class _FullLayout:
    """The whole-buffer optimizer a state dict in the single-process layout is
    checked against: the user's parameter groups, the class's spec and hooks."""

    def __init__(self, zero: _Stepping) -> None:
        self.param_groups = zero.param_groups
        self.spec = zero.spec
        self._cls = zero.optimizer_class

    def _required_state(self, state: dict, hyper: dict) -> Any:
        required: Callable[..., Any] = self._cls._required_state  # the hook reads only .spec
        return required(self, state, hyper)


class _StateDicts(_Stepping):
    """State dicts of :class:`fastopt.distributed.ZeroOptimizer`."""

    def _meta(self, what: str) -> dict[str, Any]:
        """Collective: the groups' hyperparameters (checked) and, per parameter
        of the whole layout with state, ``[step, keys]``; the same on every rank."""
        groups = _attempt(self.comm, what, self._checked_hypers)
        # and a schedule's keys (initial_lr...), which state dicts carry too
        groups = [{**h, **{k: g[k] for k in _spec.SCHEDULE_KEYS if k in g}}
                  for h, g in zip(groups, self.param_groups)]
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
            # Each rank takes its slice from its own dict: they must be the same dict.
            digests = comm.allgather(_state_digest(meta, new_state))
            if len(set(digests)) > 1:
                raise ValueError("load_state_dict(): the ranks passed different state dicts "
                                 f"(ranks {[r for r, d in enumerate(digests) if d != digests[0]]} "
                                 "differ from rank 0's); pass the same one on every rank, or "
                                 "pass root=; nothing was changed")
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
        local: dict[str, Any] = {}

        def check() -> None:
            # (the local state is built here too: a key the saved state lacks
            # raises on every rank, not on the one whose slice needs it)
            state: dict[int, dict[str, Any]] = {}
            for j, (i, off, n) in enumerate(self._local):
                entry = meta["state"].get(i)
                if entry is None:
                    continue
                step, keys = entry
                start = self._spans[i][0] + off - lo
                s: dict[str, Any] = {} if step is None else {"step": step}
                for key in keys:
                    if key not in slices:
                        raise ValueError(f"the saved state has no {key!r} array (parameter {i} "
                                         "has one)")
                    s[key] = slices[key][start:start + n]
                state[j] = s
            if len(meta["groups"]) != len(self.param_groups):
                raise ValueError(f"the saved state has {len(meta['groups'])} parameter groups, "
                                 f"this optimizer has {len(self.param_groups)}")
            local["state"] = state
            local["param_groups"] = [
                {**meta["groups"][k], "params": [j for j, (i, _, _) in enumerate(self._local)
                                                 if self._group_of[i] == k]}
                for k in self._local_groups]
            for k, g in enumerate(meta["groups"]):
                self._loaded_group(k, g)
            if self.optimizer is not None:
                views = [p for g in self.optimizer.param_groups for p in g["params"]]
                _state_io.parse(self.optimizer, local, views)

        _attempt(self.comm, what, check)
        # Everything is checked on every rank: commit.
        if self.optimizer is not None:
            self.optimizer.load_state_dict(local)
        for k, g in enumerate(meta["groups"]):
            self.param_groups[k].update(self._loaded_group(k, g))
        if params is not None:
            self.flat.data[lo:self.shard[1]] = params
            self._allgather()

    def _check_root(self, what: str, root: Any) -> None:
        """Collective: ``root`` is a rank, the same on every rank."""
        _attempt(self.comm, what, lambda: _check_rank("root", root, self.size))
        roots = self.comm.allgather(int(root))
        if len(set(roots)) > 1:
            raise ValueError(f"{what}: the ranks passed different roots {roots}")

    def _loaded_group(self, k: int, saved: dict) -> dict[str, Any]:
        """What loading ``saved`` sets in group ``k``: the merged hyperparameters,
        checked, and the saved schedule keys."""
        return {**self.spec.check(self._merged(k, saved)),
                **_spec.schedule_keys(f"the saved param_groups[{k}]", saved)}

    def _merged(self, k: int, saved: dict) -> dict[str, Any]:
        """Group ``k`` with the saved hyperparameters (not the pinned ones) over it."""
        return {**self.param_groups[k], **{key: v for key, v in saved.items()
                                           if key in self.spec.defaults
                                           and key not in self.spec.pinned}}


def _state_digest(meta: dict, state: dict) -> str:
    """A hash of a parsed state dict: its groups, steps and keys, and its arrays' bytes."""
    h = hashlib.blake2b(_digest(meta).encode(), digest_size=16)
    for i in sorted(state):
        for key in sorted(k for k in state[i] if k != "step"):
            h.update(np.ascontiguousarray(state[i][key]).view(np.uint8).data)
    return h.hexdigest()
