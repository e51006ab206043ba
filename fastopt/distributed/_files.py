"""A ``ZeroOptimizer``'s checkpoint files: the single-process file (gathered
on one rank), and one shard per rank (nothing gathered), read back at any
number of ranks."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, load as _load_file, save as _save_file
from ..flat import FlatParams
from ..optimizers import Optimizer
from ._collectives import _attempt, _from_root
from ._layout import _hyper, shard_bounds
from ._state import _StateDicts


_SHARD = re.compile(r"shard-(\d+)-of-(\d+)\.fastopt\Z")
_SHARD_FORMAT = "fastopt-zero-shard-1"


class _Files(_StateDicts):
    """Checkpoint files of :class:`fastopt.distributed.ZeroOptimizer`."""

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
            from .._ckpt_io import _read
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
                          and info["ranks"] == saved_ranks)
                except (KeyError, ValueError, TypeError):
                    ok = False
                if not ok:
                    raise CheckpointError(f"{name}: not a shard {r} of {saved_ranks} "
                                          "written by save_shards()")
                # (the class and the size first: the layout's hash covers both)
                if info.get("class") != self.optimizer_class.__name__:
                    raise CheckpointError(f"{name}: holds {info.get('class')} state, not "
                                          f"{self.optimizer_class.__name__}")
                if info.get("size") != size or info["bounds"] != [a, b]:
                    raise CheckpointError(f"{name}: saved for a FlatParams of {info.get('size')} "
                                          f"elements, this one has {size}")
                if info["layout"] != self._layout_hash:
                    raise CheckpointError(f"{name}: saved for another layout (other entries, "
                                          "groups, hyperparameters' kinds or dtype)")
                if save_id is None:
                    save_id, meta = info["save_id"], info["meta"]
                elif info["save_id"] != save_id:
                    raise CheckpointError(f"{directory}: the shards come from different saves")
                # every shard holds the parameters and each state array its header names
                held = sorted(key for key in named if key != "params")
                try:
                    wanted = ["state." + key for key in self._keys(info["meta"])]
                except (KeyError, ValueError, TypeError, AttributeError):
                    wanted = None
                if "params" not in named or held != wanted:
                    raise CheckpointError(f"{name}: the arrays in it ({held}) are not those "
                                          f"its header names ({wanted})")
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
