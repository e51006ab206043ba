"""An optimizer's parameter list: checked once, re-checked when edited.

``ParamList`` keeps the parameters of an optimizer's ``param_groups`` as they
were last checked, and each parameter's state keyed by the parameter's
identity (held, so identities stay unique). ``sync`` is cheap when the
groups hold the same objects in the same order; otherwise it checks every
group and parameter again and re-keys the state, changing nothing on error.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import numpy as np

from . import _checks as C
from . import _spec
from . import _cuda
from . import _state_dtype
from .flat import FlatParams, FlatSegment

# Every parameter list alive, to warn when two optimizers share memory.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _check_param(name: str, p: Any) -> Any:
    """A parameter of an optimizer class (bfloat16 host arrays included)."""
    return C.check_param(name, p, bfloat16=True)


# In ``ndarray.flags.num``, NumPy's C-API flag bits NPY_ARRAY_C_CONTIGUOUS
# (0x1) and NPY_ARRAY_WRITEABLE (0x400).
_WRITEABLE_C = 0x0001 | 0x0400


class ParamList:
    """The checked parameters of one optimizer.

    ``params``: the parameter objects in order (FlatParams and segments
    replaced by their buffers); ``views``: the same as the kernels take them;
    ``shapes``: their shapes when checked; ``dtypes``: the parameters' own
    dtypes then (one set in place is checked again); ``flat_grad``: id ->
    FlatParams gradient buffer; ``on_gpu``: whether they are GPU arrays.
    """

    def __init__(self, owner_name: str, target: str | None, state_keys: tuple[str, ...]):
        self.owner_name, self.target, self.state_keys = owner_name, target, state_keys
        self.params: list = []
        self.ids: tuple = ()
        self.views: list = []
        self.shapes: list = []
        self.dtypes: list = []
        self.flat_grad: dict = {}
        self.detached: dict = {}  # id -> (parameter, state) taken out of the groups
        self.on_gpu: bool | None = None
        # index -> (parameter view, its state dict, its length, the view's
        # shape, its state_dtype, (key, array, shape, dtype) of the arrays
        # check_fits passed): the same arrays in the same dict, of the same
        # shapes, dtypes and codec and still writeable and C-contiguous, are
        # not checked again
        self.fitted: dict = {}
        # whether state checked by check_fits since the last check_apart
        self.apart_pending = False
        _LIVE.add(self)

    def unchanged(self, groups: Any) -> bool:
        """Whether ``groups`` hold the checked parameters, in order (the fast path)."""
        return (type(groups) is list
                and all(type(g) is dict and type(g.get("params")) is list for g in groups)
                and tuple(id(p) for g in groups for p in g["params"]) == self.ids)

    def sync(self, groups: Any, state: dict, defaults: dict,
             new_group: int | None = None, before_commit=None) -> None:
        """Check ``groups`` whole and make them the checked list, re-keying
        ``state`` (index -> state dict) by parameter identity.

        Each parameter must still fit its state. ``groups[new_group]`` is a group being added (named so in
        errors); ``before_commit(views)``, given its parameters as the kernels
        take them, runs last among the checks. On any error nothing changes.
        """
        if not isinstance(groups, list):
            raise TypeError(f"param_groups must be a list, got {type(groups).__name__}")
        lists: list = []
        flat: dict = {}
        for k, group in enumerate(groups):
            where = "the new parameter group" if k == new_group else f"param_groups[{k}]"
            lists.append(_group_params(where, group, defaults, flat))
        params = [p for ps in lists for p in ps]
        views = self._check(params)
        old = {id(p): i for i, p in enumerate(self.params)}
        new_state = {}
        for j, p in enumerate(params):
            i = old.pop(id(p), None)
            if i is None:
                if id(p) in self.detached:
                    new_state[j] = self.detached[id(p)][1]
            elif i in state:
                new_state[j] = state[i]
            self.check_fits(j, views[j], new_state.get(j))
        if before_commit is not None and new_group is not None:
            first = sum(len(ps) for ps in lists[:new_group])
            before_commit(views[first:first + len(lists[new_group])])
        self._commit(groups, lists, params, views, state, new_state, old, defaults, flat)

    def _check(self, params: list) -> list:
        views = [_check_param(f"params[{i}]", p) for i, p in enumerate(params)]
        on_gpu = None
        for i, v in enumerate(views):
            here = not isinstance(v, np.ndarray)
            if on_gpu is None:
                on_gpu = here
            elif here != on_gpu:
                kinds = ("a GPU array", "a numpy.ndarray") if here else ("a numpy.ndarray", "a GPU array")
                raise TypeError(f"params[{i}] is {kinds[0]}, but params[0] is {kinds[1]}; "
                                "an optimizer's parameters must all be on the host or all on the GPU")
            C.check_target_matches(self.target, v, f"params[{i}]")
        seen: set = set()
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(f"params[{i}] is listed more than once "
                                 "(some parameters appear in more than one group, or twice in one)")
            seen.add(id(p))
        C.check_no_overlap([(f"params[{i}]", v) for i, v in enumerate(views)])
        return views

    def _commit(self, groups, lists, params, views, state, new_state, old, defaults, flat):
        self.fitted.clear()
        for group, ps in zip(groups, lists):
            if group.get("params") is not ps:
                group["params"] = ps
            for key, value in defaults.items():
                group.setdefault(key, value)
        for p in params:
            self.detached.pop(id(p), None)
        for pid, i in old.items():  # taken out: kept, as torch keeps it, should it come back
            if i in state:
                self.detached[pid] = (self.params[i], state[i])
        state.clear()
        state.update(new_state)
        # A FlatParams' buffer is listed as its data array after the first
        # sync, so its gradient buffer is remembered by the array's id: only
        # while the array is held here (listed, or detached with its state),
        # so that no id freed and reused can find a dead one's gradient.
        held = {id(p) for p in params} | set(self.detached)
        self.flat_grad = {pid: g for pid, g in {**self.flat_grad, **flat}.items() if pid in held}
        known = set(self.ids)
        shared = _shared_with(self, [v for p, v in zip(params, views) if id(p) not in known])
        self.params, self.ids, self.views = params, tuple(id(p) for p in params), views
        self.shapes = [v.shape for v in views]
        self.dtypes = [p.dtype for p in params]
        self.on_gpu = bool(views) and not isinstance(views[0], np.ndarray)
        if shared:
            warnings.warn(f"a parameter of this {self.owner_name} is also a parameter "
                          f"of another live {shared}: fastopt does not lock parameters across "
                          "optimizers, so never step both from two threads at once (updates "
                          "would be lost)", RuntimeWarning, stacklevel=C.caller_level())

    def check_fits(self, i: int, p: Any, state: dict | None) -> None:
        """Parameter ``i`` (as the kernels take it) has the shape and dtype of
        its state, whose arrays are writeable, C-contiguous, where ``p`` lives
        and share no memory with it or each other: what the kernels, which
        check no bounds, write through. State checked afresh (new or
        replaced since it last passed; on the GPU, every time) sets
        ``apart_pending``: then ``check_apart`` must run before a step writes."""
        check_state_kind(i, state)
        if not state:
            return
        seen = self.fitted.get(i)
        codec = state.get("state_dtype")
        if (seen is not None and seen[0] is p and seen[1] is state and seen[2] == len(state)
                and seen[3] == p.shape and seen[4] == codec):
            for key, a, shape, dtype in seen[5]:
                if (state.get(key) is not a or a.shape != shape or a.dtype is not dtype
                        or a.flags.num & _WRITEABLE_C != _WRITEABLE_C):
                    break
            else:
                # (and the keys that held None still do: an array put there
                # since, of any size, was not checked and the kernels wrote
                # through it)
                if all(state.get(key) is None for key in seen[6]):
                    return
        keys = (*self.state_keys, "master")
        if codec:
            keys += tuple(k + "_absmax" for k in self.state_keys)
        if state.get("master") is not None and not _state_dtype.is_bfloat16(p):
            # (stepped, it would be saved in a state dict no load accepts)
            raise ValueError(f"params[{i}]'s state has a 'master' copy, which only bfloat16 "
                             f"parameters keep; this one is {p.dtype} (remove the key)")
        arrays = [(key, state[key]) for key in keys if state.get(key) is not None]
        if codec:  # reduced-precision state: its own layout
            problem = _state_dtype.fits(codec, p, state, self.state_keys)
            if problem:
                raise ValueError(f"params[{i}] is {p.dtype}{list(p.shape)}, but its state "
                                 f"does not fit it ({problem}): the parameter changed after its "
                                 "first step, or its state was replaced")
        host = isinstance(p, np.ndarray)
        dtype = _state_dtype.plain_dtype(p)
        for key, a in arrays:
            if not (type(a) is np.ndarray if host else _cuda.is_cuda_array(a)):
                raise TypeError(f"params[{i}]'s state '{key}' is {type(a).__name__}, not a "
                                f"{'numpy.ndarray' if host else 'GPU array'} like the parameter")
            in_layout = codec and key != "master"  # checked by ``fits``
            if not in_layout and (a.shape != p.shape or a.dtype != dtype):
                raise ValueError(f"params[{i}] is {p.dtype}{list(p.shape)}, but its state "
                                 f"'{key}' is {a.dtype}{list(a.shape)}: the parameter changed "
                                 "after its first step, or its state was replaced")
            if not (a.flags.c_contiguous if host else a.is_c_contiguous()):
                raise ValueError(f"params[{i}]'s state '{key}' is not C-contiguous")
            if host and not a.flags.writeable:
                raise ValueError(f"params[{i}]'s state '{key}' is read-only")
        if host:
            named = [("the parameter", p)] + arrays
            for k, (key, a) in enumerate(arrays, 1):
                for other, b in named[:k]:
                    if np.may_share_memory(a, b):
                        raise ValueError(f"params[{i}]'s state '{key}' shares memory with "
                                         + (other if b is p else f"state '{other}'"))
            self.fitted[i] = (p, state, len(state), p.shape, codec,
                              [(key, a, a.shape, a.dtype) for key, a in arrays],
                              tuple(key for key in keys if state.get(key) is None))
            self.apart_pending = True
            return
        try:  # GPU arrays: by their device address ranges
            C.check_no_overlap([("the parameter", p)]
                               + [(f"state '{key}'", a) for key, a in arrays])
        except ValueError as e:
            raise ValueError(f"params[{i}]'s {e}") from None
        self.apart_pending = True

    def check_apart(self, views: list, state: dict) -> None:
        """No array of one parameter (the parameter, or a state array its
        kernel writes) shares memory with another parameter's: a state array
        set by hand to another parameter, or to its state, would be written
        twice a step. (Each parameter's own arrays are kept apart by
        ``check_fits``, and parameters from each other at construction.)
        One sweep over the arrays sorted by address (host or GPU: all of one
        kind, as the parameters are)."""
        keys = self.kernel_keys
        spans = []
        for i, v in enumerate(views):
            st = state.get(i)
            named: list[tuple[str | None, Any]] = [(None, v)]
            if isinstance(st, dict):
                named += [(k, st[k]) for k in keys if st.get(k) is not None]
            for key, a in named:
                if a.nbytes:  # (C-contiguous, as checked: one range of bytes)
                    low = _address(a)
                    spans.append((low, low + a.nbytes, i, key))
        spans.sort(key=lambda span: span[0])
        furthest = None  # of the ranges so far, the one that ends last
        for span in spans:
            if furthest is not None and span[0] < furthest[1]:
                raise ValueError(f"{_span_name(span)} shares memory with {_span_name(furthest)}")
            if furthest is None or span[1] > furthest[1]:
                furthest = span
        self.apart_pending = False

    @property
    def kernel_keys(self) -> tuple:
        """The state keys whose arrays the kernels write."""
        return (*self.state_keys, "master", *(k + "_absmax" for k in self.state_keys))

    def check_grad_apart(self, i: int, g: Any, state: Any, name: str) -> None:
        """Gradient ``g`` (``name``) shares no memory with the state arrays of
        parameter ``i``: the kernels would read it after writing them."""
        if not isinstance(state, dict):
            return
        for key in self.kernel_keys:
            a = state.get(key)
            if a is not None and (np.may_share_memory(g, a) if isinstance(a, np.ndarray)
                                  and isinstance(g, np.ndarray) else _overlap(g, a)):
                raise ValueError(f"{name} shares memory with params[{i}]'s state {key!r}")

    def as_checked(self, i: int) -> bool:
        """Whether host parameter ``i`` is as last checked: its shape and
        dtype, writeable and C-contiguous (changed in place, it is checked
        again)."""
        p = self.params[i]
        flags = p.flags
        return (p.shape == self.shapes[i] and p.dtype is self.dtypes[i]
                and flags.writeable and flags.c_contiguous)

    def current_views(self, state: dict) -> list:
        """The parameters as the kernels take them, checked again where they may
        have changed since (made read-only, resized in place; GPU tensors given
        new memory): a parameter whose shape changed must still fit its state."""
        params, shapes, dtypes = self.params, self.shapes, self.dtypes
        if self.on_gpu:
            views = [_check_param(f"params[{i}]", p) for i, p in enumerate(params)]
        else:
            views = self.views
            for i, p in enumerate(params):
                if not self.as_checked(i):
                    views[i] = _check_param(f"params[{i}]", p)
        for i, v in enumerate(views):
            if v.shape != shapes[i] or params[i].dtype is not dtypes[i]:
                self.check_fits(i, v, state.get(i))
                shapes[i], dtypes[i] = v.shape, params[i].dtype
        return views


def check_state_kind(i: int, state: Any) -> None:
    """Parameter ``i``'s entry of ``opt.state`` is a dict (or absent: None)
    whose ``"state_dtype"``, if any, names a codec (it could be set by hand)."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise TypeError(f"params[{i}]'s state is a {type(state).__name__}, not a dict")
    codec = state.get("state_dtype")
    if codec is not None and codec not in _state_dtype.CODECS:
        raise ValueError(f"params[{i}]'s state 'state_dtype' is {codec!r}, not one of "
                         f"{list(_state_dtype.CODECS)}")


def _address(a: Any) -> int:
    """The address of a host or GPU array's first byte."""
    face = getattr(a, "__array_interface__", None) or a.__cuda_array_interface__
    return face["data"][0]


def _overlap(a: Any, b: Any) -> bool:
    """Whether two C-contiguous arrays (GPU ones: by address) overlap."""
    if not (a.nbytes and b.nbytes):
        return False
    x, y = _address(a), _address(b)
    return x < y + b.nbytes and y < x + a.nbytes


def _span_name(span: tuple) -> str:
    _, _, i, key = span
    return f"params[{i}]" if key is None else f"params[{i}]'s state '{key}'"


def as_groups(params: Any) -> list[dict[str, Any]]:
    """The constructor's ``params`` as a list of group dicts."""
    if isinstance(params, (FlatParams, FlatSegment)):
        params = [params]
    if isinstance(params, np.ndarray) or _cuda.is_cuda_array(params):
        raise TypeError("params must be a list of arrays or of parameter groups, "
                        "not a single array (wrap it in a list)")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be a list of arrays or of parameter groups, "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(g, dict) for g in params):
        return params
    if not any(isinstance(g, dict) for g in params):
        return [{"params": params}]
    raise TypeError("params mixes arrays and parameter-group dicts")


def _group_params(where: str, group: Any, defaults: dict, flat: dict) -> list:
    """A group's parameters as a new list, FlatParams and segments replaced by
    their buffers (their gradient buffers checked and recorded in ``flat``);
    the group's keys checked."""
    if not isinstance(group, dict):
        raise TypeError(f"{where} must be a dict, got {type(group).__name__}")
    if "params" not in group:
        raise ValueError(f"{where} needs a 'params' entry")
    _spec.check_known(group, defaults, where)
    _spec.schedule_keys(where, group)  # as a state dict's are checked
    ps = group["params"]
    if isinstance(ps, (np.ndarray, FlatParams, FlatSegment)) or _cuda.is_cuda_array(ps):
        ps = [ps]
    elif isinstance(ps, (list, tuple)):
        ps = list(ps)
    else:
        raise TypeError(f"{where}['params'] must be a list of arrays, got {type(ps).__name__}")
    if not ps:
        raise ValueError(f"{where} has an empty 'params' list")
    for k, p in enumerate(ps):
        if isinstance(p, (FlatParams, FlatSegment)):
            grad = p.grad_data
            ps[k] = p = p.data
            name = f"{where}['params'][{k}]"
            view = _check_param(name, p)
            C.check_state(f"{name}'s grad_data", grad, view, "its data")
            C.check_no_overlap([("its data", view),
                                (f"{name}'s grad_data", C.check_grad("grad_data", grad, view, "data"))])
            flat[id(p)] = grad
    return ps


def _shared_with(me: ParamList, views: list) -> str | None:
    """The class name of another live optimizer one of whose parameters shares
    memory with one of ``views`` (host arrays), or None."""
    spans = [(v.__array_interface__["data"][0], v.nbytes) for v in views
             if isinstance(v, np.ndarray) and v.nbytes]
    if not spans:
        return None
    for other in list(_LIVE):
        if other is me:
            continue
        for w in other.views:
            if isinstance(w, np.ndarray) and w.nbytes:
                start = w.__array_interface__["data"][0]
                if any(s < start + w.nbytes and start < s + n for s, n in spans):
                    return other.owner_name
    return None


