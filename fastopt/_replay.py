"""A step's kernel calls, made again while nothing they depend on has changed.

A checked step of host arrays costs tens of microseconds of Python (checks,
scalars, numba's dispatch of twenty arguments) before the kernel runs; on a
tensor of a few thousand elements that is most of the step. After such a
step, ``Replay`` keeps each parameter's kernel arguments. The next
``step(grads)`` with default options replays them when every fact the checks
established still holds — the same groups holding the same parameters and
hyperparameter objects, the parameters still writable, C-contiguous and of
their shapes, the same state arrays (stored as they were, with the same
block scales), and gradients that are plain C-contiguous
arrays of the parameters' shapes and dtypes, not overlapping them — changing
only the gradient and the scalars that follow the step count or a
schedule's learning rate, and calling
numba's compiled function for the kernel's exact types (its argument checks
are the ones just made). Anything else takes the checked path, which records
a new replay. Results are bitwise those of the checked path. State arrays
are recognised by identity, with their dtype and flags: one replaced, or
changed in place (made read-only, given another dtype or strides), sends
the step to the checked path. The kernels take them through 1-D views of
their own, so two changes in place are not seen: a new shape of the same
size and layout (the same elements are stepped; the checked path would
refuse it), and a resize with ``refcheck=False``, which NumPy calls unsafe
while other views of the array exist, as these do (not supported).

``Call`` does the same for the functions of ``functional``: a call on the
same parameter and state arrays with the same hyperparameters repeats the
last one recorded for that function and parameter.
"""

import copy
import operator
import threading
import weakref

import numpy as np

from . import _spec, config
from ._dispatch import direct, kernel, settled
from ._state_dtype import plain_dtype
from ._checks import STEP_LIMIT
from ._update import (MOMENTUM_ARGS, MOMENTUM_KEYS, SCALARS, STEP_ARGS, STEP_SCALARS,
                      check_range, rounding_seed)
from .kernels.spec import KERNELS

_is = operator.is_


class _Launch:
    """A recorded kernel call: ``name``'s arguments ``args`` for a parameter
    like ``p`` under ``target``; ``varying`` the positions of the scalars
    given anew each time (``step_args``); ``fn`` numba's compiled function
    while the choice of kernel is settled, that is while
    ``config.PARALLEL_THRESHOLD`` is still ``threshold`` (else None: ask
    ``kernel`` each time)."""

    __slots__ = ("shape", "dtype", "scalars", "name", "args", "varying", "put", "fn", "scalar",
                 "target", "threshold")

    def __init__(self, p, name, args, step_args, target):
        self.shape, self.dtype, self.name, self.target = p.shape, p.dtype, name, target
        self.args = list(args)
        names = KERNELS[name].names
        self.varying = tuple(names.index(arg) for arg in step_args)
        self.put = _putter(self.varying)
        self.scalars = plain_dtype(p)  # the kernel's scalars' dtype (float32 for bfloat16)
        fn = settled(name, target, p)
        self.fn = None if fn is None else direct(fn, name, self.scalars)
        self.scalar = SCALARS[self.scalars]
        self.threshold = config.PARALLEL_THRESHOLD

    def launch(self, p, args, values):
        """Call the kernel for ``p`` with ``args`` (this launch's, updated by
        the caller), the scalars at ``varying`` set to ``values``."""
        fn = self.fn if config.PARALLEL_THRESHOLD == self.threshold else None
        if fn is None:
            chosen = kernel(self.name, self.target, p)
            fn = direct(chosen, self.name, self.scalars)
        if fn is not None:  # numba's compiled function: takes Python floats
            self.put(args, values)
            fn(*args)
        else:  # a dispatcher, through a timer or guard: scalars of the dtype
            for position, value in zip(self.varying, values):
                args[position] = self.scalar(value) if type(value) is float else value
            chosen(*args)


_PUTTERS: dict = {}


def _putter(positions):
    """A function ``put(args, values)`` doing ``args[positions[k]] = values[k]``
    for every k, in one assignment (a loop in Python costs several times as much)."""
    put = _PUTTERS.get(positions)
    if put is None:
        targets = "".join(f"args[{int(k)}], " for k in positions)
        namespace: dict = {}
        exec(f"def put(args, values):\n    {targets}= values\n", namespace)
        put = _PUTTERS[positions] = namespace["put"]
    return put


class _Entry(_Launch):
    """One parameter's recorded kernel call in an optimizer's step. A
    bfloat16 parameter (``bits``) is passed as its uint16 bits, and its
    gradient too; where the optimizer counts steps (``seeded``), the seed of
    its stochastic rounding is given anew each step."""

    __slots__ = ("p", "index", "state", "owner", "owner_dtype", "last_g", "hyper", "bits",
                 "seeded", "grad_at", "scalars_of", "check", "p_as_given")

    def __init__(self, opt, index, p, name, args, hyper):
        self.bits = bool(KERNELS[name].params)
        self.seeded = self.bits and opt.spec.has_step
        super().__init__(p, name, args,
                         STEP_ARGS[opt._RULE] + (("seed",) if self.seeded else ()), opt.target)
        self.p, self.index, self.state, self.hyper = p, index, opt.state[index], hyper
        self.grad_at = KERNELS[name].names.index("g")  # after the master copy, if any
        # The gradient is given at each step and not held between steps (nor
        # its identity, below, but weakly): an optimizer that kept the last
        # one alive would double the gradients' memory in a loop that frees
        # them after the step.
        self.args[self.grad_at] = None
        # The state arrays as the kernels take them, through views of our own:
        # a change made in place to the user's array objects (its dtype,
        # strides or flags set) cannot reach the compiled call, whose
        # arguments are not checked.
        self.args = [a.view() if k and type(a) is np.ndarray else a
                     for k, a in enumerate(self.args)]
        counted = opt.spec.has_step  # a step count, an int as the checks left it
        # The user's array, where the kernels take a base-class view of it (a
        # subclass): its own flags and dtype can change without the view's.
        user = opt._plist.params[index]
        self.owner = None if user is p else user
        self.owner_dtype = user.dtype  # (the view's own is ``dtype``)
        self.last_g = None
        self.scalars_of = None  # the function of the step count giving its scalars (``Replay``)
        # What ``Replay.run`` checks, in one tuple (unpacked faster than read
        # attribute by attribute): the state's facts (``_state_facts``) among them.
        _, length, fetch, held, arrays, layouts = _state_facts(opt, self.state)
        self.check = (index, p, self.shape, self.dtype, self.state, length, fetch, held,
                      counted, self.owner, self.bits, arrays, layouts)
        # The kernel takes the parameter itself (1-D, not bfloat16 bits): its
        # argument needs no new view at each step.
        self.p_as_given = self.args[0] is p

    def seeded_values(self, values):
        """``values``, this step's scalars, and the seed of its stochastic rounding."""
        # a uint32 (not a Python int) through a dispatcher too: no new signature
        return (*values, np.uint32(rounding_seed(self.hyper["rounding_seed"], self.state["step"],
                                                 self.p.size)))


class Replay:
    """What a checked step of ``opt`` launched: ``launches`` is ``[(index,
    parameter, kernel name, argument tuple, checked hyperparameters)]`` for
    the parameters it updated, of ``n`` parameters."""

    __slots__ = ("group_list", "groups", "n", "entries", "absent")

    def __init__(self, opt, launches, n):
        self.group_list = opt.param_groups
        self.n = n
        self.entries = tuple(_Entry(opt, *launch) for launch in launches)
        # Per group: [group, its params list, their objects, the values of
        # its items, its keys, its entries] (the values change with the lr).
        self.groups = []
        start = 0
        pending = iter(self.entries)  # (in index order, as the groups are)
        e = next(pending, None)
        for group in opt.param_groups:
            params = group["params"]
            members = tuple(params)
            entries = []
            while e is not None and e.index < start + len(members):
                entries.append(e)
                e = next(pending, None)
            self.groups.append([group, params, members, tuple(group.values()), tuple(group),
                                entries])
            start += len(members)
        present = {e.index for e in self.entries}
        self.absent = tuple((i, _state_facts(opt, opt.state.get(i)))
                            for i in range(n) if i not in present)
        _share_scalars(opt, self.entries)

    @staticmethod
    def eligible(opt, params, grads, inv_scale, check_finite, clip):
        """Whether a checked step with these arguments can be replayed: host
        arrays, default options, hyperparameters that cannot change in place."""
        return (inv_scale == 1.0 and not check_finite and clip is None
                and all(type(p) is np.ndarray for p in params)
                and all(g is None or type(g) is np.ndarray for g in grads)
                and all(entry[2] is not None for entry in opt._hyper_cache.values()))

    def _absent_unchanged(self, opt, grads):
        """Whether the parameters the recorded step skipped are skipped again
        (no gradient) and still as checked, with their state: the checked
        step checks every parameter and state (made read-only, reshaped in
        place or replaced, it refuses one)."""
        return all(grads[i] is None and opt._plist.as_checked(i)
                   and _state_holds(opt.state.get(i), facts) for i, facts in self.absent)

    def run(self, opt, grads):
        """Step ``opt`` with ``grads`` (None: its FlatParams' gradients) by
        replaying, if everything still holds; return whether it did (if not,
        nothing was changed)."""
        if grads is not None:
            if type(grads) is not list and type(grads) is not tuple:
                # any other sized collection the checked path takes (a dict's
                # values, a deque) as a list; not an array (refused there)
                if (isinstance(grads, np.ndarray) or not hasattr(grads, "__len__")
                        or hasattr(grads, "__cuda_array_interface__")):
                    return False
                grads = list(grads)
            if len(grads) != self.n:
                return False
        with opt._lock:
            groups = opt.param_groups
            if (opt._replay is not self or groups is not self.group_list
                    or len(groups) != len(self.groups)):
                return False
            for record, now in zip(self.groups, groups):
                group, params, members, values, _, _ = record
                if (now is not group or group.get("params") is not params
                        or len(params) != len(members) or not all(map(_is, params, members))):
                    return False
                if ((len(group) != len(values) or not all(map(_is, group.values(), values)))
                        and not _new_lr(opt, record)):
                    return False
            if grads is None:  # FlatParams' gradient buffers, as the checked path takes them
                flat_grad = opt._plist.flat_grad
                grads = [flat_grad.get(id(p)) for p in opt._plist.params]
                if len(grads) != self.n or any(g is None for g in grads):
                    return False  # (the checked path refuses a parameter not from one)
            state = opt.state
            flats = []  # the gradients as the kernels take them (not held once this returns)
            try:
                for e in self.entries:
                    (index, p, shape, dtype, st, keys, fetch, held, counted, owner, bits, arrays,
                     layouts) = e.check
                    g = grads[index]
                    if g is None:  # no gradient this time: skipped, still as checked
                        if not (opt._plist.as_checked(index) and _state_holds(
                                state.get(index), (st, keys, fetch, held, arrays, layouts))):
                            return False
                        flats.append(None)
                        continue
                    if (type(g) is not np.ndarray or g.dtype is not dtype or g.shape != shape
                            or p.shape != shape or p.dtype is not dtype
                            or state.get(index) is not st or len(st) != keys
                            or not all(map(_is, fetch(st), held))
                            or counted and not (type(st["step"]) is int
                                                and 0 <= st["step"] < STEP_LIMIT)):
                        return False
                    flags = p.flags
                    if not (flags.writeable and flags.c_contiguous and g.flags.c_contiguous):
                        return False
                    for a, (a_dtype, a_flags) in zip(arrays, layouts):
                        if a.dtype is not a_dtype or a.flags.num != a_flags:
                            return False
                    if owner is not None and (owner.shape != shape or not owner.flags.writeable
                                              or not owner.flags.c_contiguous
                                              or owner.dtype is not e.owner_dtype):
                        return False
                    last_g = e.last_g
                    if last_g is None or last_g() is not g:
                        # (a new gradient: not the parameter, nor its state)
                        if np.may_share_memory(g, p) or any(
                                np.may_share_memory(g, a) for a in arrays):
                            return False
                        e.last_g = weakref.ref(g)
                    if g.ndim != 1:
                        g = g.reshape(-1)
                    flats.append(g.view(np.uint16) if bits else g)
            except KeyError:  # a held state array's key removed (and another added)
                return False
            if self.absent and not self._absent_unchanged(opt, grads):
                return False
            # Everything holds: from here on, nothing raises.
            advance = opt._advance
            threshold = config.PARALLEL_THRESHOLD
            # The step's scalars, kept from one parameter to the next of a group
            # while its step count is the same: a function of both.
            key = scalars_of = values = None
            for e, g in zip(self.entries, flats):
                if g is None:
                    continue
                args = e.args
                if not e.p_as_given:
                    p = e.p
                    flat = p if p.ndim == 1 else p.reshape(-1)
                    args[0] = flat.view(np.uint16) if e.bits else flat
                args[e.grad_at] = g
                now = advance(e.state)
                if now != key or e.scalars_of is not scalars_of:
                    key, scalars_of = now, e.scalars_of
                    values = scalars_of(now)
                step_values = e.seeded_values(values) if e.seeded else values
                fn = e.fn
                if fn is not None and threshold == e.threshold:
                    e.put(args, step_values)
                    fn(*args)
                else:
                    e.launch(e.p, args, step_values)
                args[e.grad_at] = None
            return True


def _new_lr(opt, record):
    """Whether only the group's learning rate changed, or its momentum too
    (SGD's momentum, Adam's betas: OneCycleLR cycles it) -- a schedule's
    doing -- to valid values: then its entries take them, as the checked
    step would make them (they are its checked values)."""
    group, _, _, values, keys, entries = record
    now = tuple(group.values())
    if len(now) != len(values) or tuple(group) != keys:
        return False
    changed = [k for k, a, b in zip(keys, now, values) if a is not b]
    if not changed or any(k != "lr" and k not in MOMENTUM_KEYS[opt._RULE] for k in changed):
        return False
    if not all(_spec.immutable(group[k]) or (type(group[k]) is tuple and all(
            map(_spec.immutable, group[k]))) for k in changed):  # held by identity from here on
        return False
    try:
        if changed == ["lr"]:  # (a learning-rate schedule: the usual case, checked alone)
            checked = {"lr": opt.spec.hyper("lr").check(group["lr"])}
        else:  # with the cross-rules (nesterov needs momentum)
            checked = opt.spec.check(group)
        if entries:
            hyper = {**entries[0].hyper, **checked}
            for dtype in {e.scalars for e in entries}:
                check_range(opt._RULE, hyper, dtype, "")
    except (TypeError, ValueError):  # the checked step says why
        return False
    if entries:
        updates = []
        if changed != ["lr"]:
            made: dict = {}  # (kernel, scalars' dtype) -> (its putter, the new values)
            for e in entries:
                put = made.get((e.name, e.scalars))
                if put is None:
                    names = KERNELS[e.name].names
                    values = MOMENTUM_ARGS[opt._RULE](hyper, SCALARS[e.scalars])
                    if ("use_momentum" in values
                            and values["use_momentum"] != e.args[names.index("use_momentum")]):
                        return False  # momentum switched on or off: its state changes
                    put = made[e.name, e.scalars] = (
                        _putter(tuple(names.index(k) for k in values)), tuple(values.values()))
                updates.append((e, put))
        for e, (put, values) in updates:
            put(e.args, values)
        for e in entries:
            e.hyper = hyper
        _share_scalars(opt, entries)
    record[3] = now
    return True


def _share_scalars(opt, entries):
    """Give each entry the function of the step count that computes its
    step's scalars, one per hyperparameter dict (a group's entries share it,
    and ``Replay.run`` computes them once for all of them)."""
    made = {}
    for e in entries:
        scalars_of = made.get(id(e.hyper))
        if scalars_of is None:
            scalars_of = made[id(e.hyper)] = STEP_SCALARS[opt._RULE](e.hyper)
        e.scalars_of = scalars_of


def _state_facts(opt, st):
    """What a replay checks of a parameter's state ``st`` (a dict, or None):
    ``(st, its length, a fetcher of its held values, those values, the
    arrays among them, their (dtype, flags))``. The held values are the state
    arrays (reduced-precision ones with their block scales, a master copy)
    and how they are stored; the length sees anything added (a stray
    "master" would be read later); the arrays' dtype and flags, one changed
    in place (made read-only, given another dtype or strides), as a new
    array is, send the step to the checked path."""
    if st is None:
        return None, 0, _fetcher(()), (), (), ()
    keys = opt.spec.state_keys
    held = tuple((key, st[key])  # (a key holding None too: an array put there is new)
                 for key in (*keys, *(k + "_absmax" for k in keys), "master", "state_dtype")
                 if key in st)
    arrays = tuple(a for _, a in held if type(a) is np.ndarray)
    return (st, len(st), _fetcher(tuple(key for key, _ in held)), tuple(a for _, a in held),
            arrays, tuple((a.dtype, a.flags.num) for a in arrays))


def _state_holds(st, facts):
    """Whether state ``st`` is the one of ``facts`` (``_state_facts``), as it was."""
    was, length, fetch, held, arrays, layouts = facts
    if st is not was:
        return False
    if st is None:
        return True
    try:
        if len(st) != length or not all(map(_is, fetch(st), held)):
            return False
    except KeyError:
        return False
    return all(a.dtype is dtype and a.flags.num == flags for a, (dtype, flags) in zip(arrays, layouts))


def _fetcher(keys):
    """A function of a dict giving the tuple of its values at ``keys`` (KeyError if one is missing)."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    if keys:
        return lambda d, key=keys[0]: (d[key],)
    return lambda d: ()


class Call(_Launch):
    """A checked call of a ``functional`` function, made again (``recall``)
    for a call with the same parameter and state arrays (held weakly), the
    same hyperparameters (by type and value) and the same target (see
    ``matches``); ``arrays`` are the call's arrays in kernel order (None where
    absent), ``writes`` whether each is written, ``positions`` where each
    goes in ``args``."""

    __slots__ = ("refs", "writes", "positions", "key", "hyper", "scalars_of")

    def __init__(self, arrays, writes, key, hyper, name, args, step_args, target, scalars_of):
        super().__init__(arrays[0], name, args, step_args, target)
        self.refs = tuple(None if a is None else weakref.ref(a) for a in arrays)
        self.writes = writes
        names = KERNELS[name].names
        self.positions = (0, 1) + tuple(names.index(k) for k in KERNELS[name].of_kind("array")[2:])
        for a, position in zip(arrays, self.positions):
            if a is not None:
                self.args[position] = None  # given at each run: not held here
        self.key, self.hyper = key, hyper
        self.scalars_of = scalars_of  # the function giving the step's scalars (``_update``)

    @staticmethod
    def eligible(arrays, checked, inv_scale, target, name):
        """Whether a checked call can be recalled: host arrays taken as they
        were given (none copied), no gradient scale, no codec."""
        return (inv_scale == 1.0 and target != "cuda" and not KERNELS[name].codec
                and all(a is c and (a is None or type(a) is np.ndarray)
                        for a, c in zip(arrays, checked)))

    def matches(self, arrays, given, target):
        """Whether a call with these arguments is this one again: the same
        parameter and state arrays, still of their checked shapes, dtype and
        layout, and a gradient like the last (any array of that shape,
        dtype and layout that does not overlap the others)."""
        if target != self.target or _spec.cache_key(given) != self.key:
            return False
        shape, dtype = self.shape, self.dtype
        new_grad = False
        for a, ref, writes in zip(arrays, self.refs, self.writes):
            if a is None:
                if ref is not None:
                    return False
                continue
            if (ref is None or type(a) is not np.ndarray or a.shape != shape
                    or a.dtype is not dtype):
                return False
            if ref() is not a:
                if writes:  # the parameter and the state must be the same arrays
                    return False
                new_grad = True
            flags = a.flags
            if not flags.c_contiguous or (writes and not flags.writeable):
                return False
        if new_grad:
            grad = arrays[1]
            if any(np.may_share_memory(grad, a) for k, a in enumerate(arrays)
                   if k != 1 and a is not None):
                return False
            self.refs = (self.refs[0], weakref.ref(grad)) + self.refs[2:]
        return True

    def with_new_lr(self, given):
        """A copy of this call for hyperparameters ``given`` that differ from
        its own in the learning rate only, to a valid one (its scalars are
        among those given at each run); else None."""
        key = _spec.cache_key(given)
        if key is None or self.key is None or len(key) != len(self.key):
            return None
        changed = [new for new, old in zip(key, self.key) if new != old]
        if len(changed) != 1 or changed[0][0] != "lr":
            return None
        rule = KERNELS[self.name].rule_function
        try:
            lr = _spec.RULE_SPECS[rule].hyper("lr").check(given["lr"])
            hyper = {**self.hyper, "lr": lr}
            check_range(rule, hyper, self.scalars, "")
        except (TypeError, ValueError):  # the checked call says why
            return None
        moved = copy.copy(self)
        moved.key, moved.hyper, moved.scalars_of = key, hyper, STEP_SCALARS[rule](hyper)
        return moved

    def run(self, arrays, values):
        """Launch with ``arrays`` (those of ``matches``) and the step's scalars."""
        args = list(self.args)  # a copy: calls from several threads may share this one
        for a, position in zip(arrays, self.positions):
            if a is not None:
                args[position] = a if a.ndim == 1 else a.reshape(-1)
        self.launch(arrays[0], args, values)


# (function name, id of the parameter) -> the last recorded call of that
# function on that parameter: a loop over a model's layers repeats each.
# Its arrays are held weakly, so an id reused by a new array never matches.
_CALLS: dict = {}
_KEEP = 4096  # recorded calls at most (then the oldest half is dropped)


def recall(fn, arrays, given, target):
    """The recorded call of function ``fn`` these arguments repeat (or
    repeat with a new learning rate: a schedule's), or None."""
    call = _CALLS.get((fn, id(arrays[0])))
    if call is None:
        return None
    if call.matches(arrays, given, target):
        return call
    moved = call.with_new_lr(given)
    if moved is not None and moved.matches(arrays, given, target):
        _CALLS[fn, id(arrays[0])] = moved  # (a copy: a thread running the old one keeps it)
        return moved
    return None


_CALLS_LOCK = threading.Lock()  # (functional calls may come from several threads)


def remember(fn, arrays, call):
    with _CALLS_LOCK:
        if len(_CALLS) >= _KEEP:
            # Calls on freed parameters first; then the oldest half (a loop over
            # more layers than this keeps recording; clearing everything made a
            # loop over 1,100 layers never replay).
            for key in [key for key, c in list(_CALLS.items()) if c.refs[0]() is None]:
                _CALLS.pop(key, None)
            if len(_CALLS) >= _KEEP // 2:
                for key in list(_CALLS)[:len(_CALLS) - _KEEP // 2]:
                    _CALLS.pop(key, None)
        _CALLS.pop((fn, id(arrays[0])), None)  # (re-inserted: the newest)
        _CALLS[fn, id(arrays[0])] = call
