"""The optimizer base class: parameter groups, the step, state dicts.

The subclasses in ``optimizers.py`` name their specification and implement
two hooks; the parameter-list bookkeeping lives in ``_params.py`` and the
state-dict conversion in ``_state_io.py``.
"""

from __future__ import annotations

import inspect
import operator
import os
import threading
import weakref
from typing import Any, Iterable, Sequence

import numpy as np

from . import _checks as C
from . import _cuda
from . import _spec
from . import _state_dtype, _state_io
from . import _update as U
from ._params import ParamList, as_groups
from ._replay import Replay
from ._state_dtype import plain_dtype

__all__ = ["Optimizer"]


# Every live optimizer, so that a forked child gets each a lock of its own: a
# thread of the parent may have held one, and it does not exist in the child.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for opt in list(_LIVE):
        opt._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


class Optimizer:
    """Base class: parameter groups, the step, state dicts.

    A subclass names its specification (``spec``: hyperparameters, defaults,
    ranges, rules and state keys, see ``fastopt._spec``), from which its
    constructor's signature is made, and implements two hooks:
    ``_new_state(p, hyper)`` (a parameter's state before its first step) and
    ``_update(p, g, inv_scale, state, hyper)`` (one step of one parameter,
    nothing checked). Optional hooks: ``_group_added`` (Adagrad creates its
    state with the group) and ``_required_state`` (which state keys a
    loaded state must have). ``_RULE`` names the update rule ("sgd",
    "adagrad", "adam"). A replayed step (``_replay``) takes the kernel's
    scalars that change from step to step (``_update.STEP_ARGS[_RULE]``)
    anew: ``_advance(state)`` counts the step in a parameter's state and
    returns what those scalars depend on besides the hyperparameters (the
    step count), and ``_update.STEP_SCALARS[_RULE](hyper)`` is the function
    of that which computes them.

    State follows the parameter object, not its position: ``param_groups``
    and each group's ``"params"`` may be edited between steps (reordered,
    shortened, extended, entries replaced), as with ``torch.optim``. Every
    step checks the parameter list again when it has changed, and checks that
    each parameter still fits its state, before anything is written.
    ``opt.state`` is keyed by the parameters' positions, re-keyed to an
    edited list by the next step, state dict or ``add_param_group``.
    """

    spec: _spec.Spec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            target = inspect.Parameter("target", inspect.Parameter.KEYWORD_ONLY, default=None)
            setattr(cls, "__signature__",
                    inspect.Signature([params, *cls.spec.parameters(), target]))
            cls.spec.document(cls)

    def __init__(self, params: Any, *args: Any, target: str | None = None, **hyperparameters: Any):
        """See the class's docstring; the hyperparameters are the spec's."""
        spec = self.spec
        try:
            bound = inspect.Signature(spec.parameters()).bind(*args, **hyperparameters)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}(): {e}") from None
        bound.apply_defaults()
        self._target = C.check_target(target)
        self.defaults = {**spec.defaults, **bound.arguments}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._lock = threading.RLock()  # one step, state dict or group change at a time
        _LIVE.add(self)
        self._plist = ParamList(type(self).__name__, self.target, self.spec.state_keys)
        self._hyper_cache: dict[int, tuple] = {}  # group index -> (typed values, checked dict)
        for group in as_groups(params):
            self.add_param_group(group)

    # --- groups --------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a dict with "params" and optional hyperparameters)."""
        with self._lock:
            self._sync()
            if not isinstance(param_group, dict):
                raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
            group = {**self.defaults, **param_group}
            groups = self.param_groups + [group]

            where = f"param_groups[{len(self.param_groups)}]['params']"

            def check(views: list) -> None:
                group.update(self.spec.check(group))
                for k, p in enumerate(views):  # a state dtype the parameters cannot take
                    _state_dtype.resolve(group.get("state_dtype"), p, f"{where}[{k}]")
            self._plist.sync(groups, self.state, self.defaults,
                             new_group=len(self.param_groups), before_commit=check)
            self._replay = None
            self.param_groups.append(group)
            n = len(group["params"])
            self._hyper_cache.clear()
            self._group_added(group, len(self._plist.params) - n, self._plist.views[-n:])

    def _new_state(self, p: Any, hyper: dict) -> dict[str, Any]:
        """A parameter's state before its first step."""
        raise NotImplementedError

    def _update(self, p: Any, g: Any, inv_scale: float, state: dict,
                hyper: dict) -> tuple[str, tuple]:
        """One step of one parameter; everything is checked. Returns the
        kernel's name and the arguments it was called with."""
        raise NotImplementedError

    def _group_added(self, group: dict, first: int, views: list) -> None:
        """Hook run after a group is added; ``views`` are the group's parameters
        as the kernels take them, the first at index ``first``."""

    def _sync(self) -> None:
        """Re-check the parameter list if ``param_groups`` were edited."""
        if not self._plist.unchanged(self.param_groups):
            self._plist.sync(self.param_groups, self.state, self.defaults)
            self._hyper_cache.clear()

    @property
    def target(self) -> str | None:
        """Where the kernels run (None, "serial", "parallel" or "cuda"), as
        given to the constructor; fixed for the optimizer's life."""
        return self._target

    # --- stepping ------------------------------------------------------------

    last_grad_norm: float | None = None
    _replay: Replay | None = None  # the last checked step, to replay (``_replay``)

    def step(self, grads: Sequence[Any] | None = None, *, check_finite: bool = False,
             grad_scale: float | None = None, max_grad_norm: float | None = None,
             norm_type: float = 2.0) -> bool | None:
        """Update every parameter in place from ``grads`` (one per parameter, or None).

        Parameters
        ----------
        grads : sequence of arrays or None, optional
            One gradient per parameter, in order (groups in order); a None
            entry leaves its parameter and state untouched. Without ``grads``,
            every parameter must come from a FlatParams, and its gradient is
            read from the FlatParams' gradient buffer.
        check_finite : bool
            First scan every (unscaled) gradient; if any element is NaN or
            infinite, skip the whole step (parameters, state and step counts
            untouched).
        grad_scale : float, optional
            Divide every gradient by it first, fused into the step
            (mixed-precision loss scaling).
        max_grad_norm : float, optional
            Clip the gradients by their global norm, as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm, norm_type)``
            before the step would: the norm of all the (unscaled) gradients
            together is taken in one pass over them, and each gradient is
            multiplied by ``min(1, max_grad_norm / (norm + 1e-6))`` inside
            the update (the gradients are not written). The norm, before
            clipping, is kept in ``last_grad_norm``. With ``check_finite``,
            one pass serves both: a NaN or infinite norm skips the step.
        norm_type : float
            2 (the default) or ``math.inf`` (the largest absolute value).

        Returns
        -------
        bool or None
            With ``check_finite``, whether the step was taken; else None
            (non-finite values propagate, as in torch).
        """
        replay = self._replay
        if (replay is not None and check_finite is False and grad_scale is None
                and max_grad_norm is None and replay.run(self, grads)):
            return None
        with self._lock:
            self._sync()
            check_finite = C.check_flag("check_finite", check_finite)
            clip = C.check_clip(max_grad_norm, norm_type)
            params = self._plist.current_views(self.state)
            inv_scale = C.check_grad_scale(grad_scale, (plain_dtype(p) for p in params))
            if grads is None:
                grads = [self._plist.flat_grad.get(id(p)) for p in self._plist.params]
                if any(g is None for g in grads):
                    raise TypeError("step() without grads needs every parameter to come from a "
                                    "FlatParams; pass one gradient per parameter")
                names = "FlatParams gradient of params[{}]"
            else:
                if (isinstance(grads, np.ndarray) or not hasattr(grads, "__len__")
                        or (self._plist.on_gpu and _cuda.is_cuda_array(grads))):
                    raise TypeError("grads must be a sequence with one gradient array (or None) "
                                    "per parameter")
                if len(grads) != len(params):
                    raise ValueError(f"grads has {len(grads)} entries, but the optimizer has "
                                     f"{len(params)} parameters")
                names = "grads[{}]"
            checked = [g if g is None or _plain_fit(g, p)
                       else C.check_grad(names.format(i), g, p, f"params[{i}]")
                       for i, (g, p) in enumerate(zip(grads, params))]
            for i, (g, p) in enumerate(zip(checked, params)):
                if g is None:
                    continue
                if isinstance(g, np.ndarray):
                    if np.may_share_memory(g, p):
                        raise ValueError(f"{names.format(i)} shares memory with params[{i}]")
                else:
                    C.check_no_overlap([(names.format(i), g), (f"params[{i}]", p)])
            return self._apply(params, checked, inv_scale, check_finite, clip)

    def _checked_hypers(self) -> list[dict[str, Any]]:
        """Every group's checked hyperparameters. A group holding the very
        objects checked at the last step (immutable ones), or values of the
        same types that compare equal, is not checked again."""
        cache = self._hyper_cache
        hypers = []
        for k, group in enumerate(self.param_groups):
            objects = tuple(group.values())
            cached = cache.get(k)
            if (cached is not None and cached[2] is not None and len(objects) == len(cached[2])
                    and all(map(operator.is_, objects, cached[2]))):
                hypers.append(cached[1])
                continue
            key = _spec.cache_key(group)
            if key is None or cached is None or cached[0] != key:
                try:
                    _spec.check_known(group, self.defaults)  # (a typo set by hand)
                    checked = self.spec.check(group)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"param_groups[{k}]: {e}") from None
            else:
                checked = cached[1]
            # The identity test is safe only when no hyperparameter can change in place.
            mutable = key is None or any(type(v) is list for n, v in group.items() if n != "params")
            cache[k] = (key, checked, None if mutable else objects)
            hypers.append(checked)
        return hypers

    def _apply(self, params: list, grads: list, inv_scale: float, check_finite: bool,
               clip: tuple[float, float] | None = None) -> bool | None:
        """Check the hyperparameters (and the gradients' values, with
        ``check_finite``; their norm, with ``clip``), then step every
        parameter with a gradient."""
        hypers = self._checked_hypers()
        counts = self._check_state(params, grads, hypers)
        for state, count in counts:  # all checked: written as a state dict's is read
            state["step"] = count
        present = [g for g in grads if g is not None]
        if clip is not None:
            inv_scale, self.last_grad_norm, finite = U.clip_scale(present, inv_scale, *clip,
                                                                  self.target)
            if check_finite and not finite:
                return False
        elif check_finite and U.any_nonfinite(present, inv_scale, self.target):
            return False
        # Everything is checked: from here on, nothing raises. ``params`` are
        # the arrays as the kernels take them (GPU arrays as numba views).
        self._replay = None
        launches = []
        i = 0
        for group, hyper in zip(self.param_groups, hypers):
            for _ in group["params"]:
                g = grads[i]
                if g is not None:
                    p = params[i]
                    state = self.state.get(i)
                    if not state:  # none yet, or emptied by hand: fresh, as torch
                        state = self.state[i] = self._new_state(p, hyper)
                    name, args = self._update(p, g, inv_scale, state, hyper)
                    launches.append((i, p, name, args, hyper))
                i += 1
        if Replay.eligible(self, params, grads, inv_scale, check_finite, clip):
            self._replay = Replay(self, launches, len(params))
        return True if check_finite else None

    def _check_step(self, grads: list, hypers: list) -> None:
        """Raise what ``step(grads)`` with hyperparameters ``hypers`` would
        refuse in the parameters and their state, writing nothing:
        ZeroOptimizer asks every rank before any rank steps."""
        with self._lock:
            self._sync()
            self._check_state(self._plist.current_views(self.state), grads, hypers)

    def _check_state(self, params: list, grads: list, hypers: list) -> list:
        """The checks a step makes of each parameter's state before any write,
        with the groups' checked hyperparameters ``hypers``: state replaced or
        removed since the last step must fit too (the kernels write through
        it). Returns ``[(state, its step count as a whole number)]`` for the
        counts set by hand, to be written once the step is sure to go on."""
        i = 0
        ranged = set()  # (group, dtype) whose scalars are in the dtype's range
        counts = []  # (state, its step count as a whole number) of counts set by hand
        for k, (group, hyper) in enumerate(zip(self.param_groups, hypers)):
            for _ in group["params"]:
                dtype = params[i].dtype
                if grads[i] is not None and (k, dtype) not in ranged:
                    U.check_range(self._RULE, hyper, plain_dtype(params[i]), f"params[{i}]")
                    ranged.add((k, dtype))
                state = self.state.get(i)
                # (also without a gradient: its arrays may be another's)
                self._plist.check_fits(i, params[i], state)
                if grads[i] is not None and state:
                    self._plist.check_grad_apart(i, grads[i], state, f"the gradient of params[{i}]")
                    step = state.get("step")
                    if self.spec.has_step and not (type(step) is int
                                                   and 0 <= step < C.STEP_LIMIT):
                        # set by hand: a whole number, as a state dict's is read
                        counts.append((state, _state_io.step_count(
                            f"params[{i}]'s state 'step'", state.get("step"))))
                    missing = [k for k in self._required_state(state, hyper)
                               if k not in self._MADE_BY_STEP and state.get(k) is None]
                    if missing:
                        raise ValueError(f"params[{i}]'s state lacks {missing} (removed or set "
                                         "to None since its first step)")
                i += 1
        if self._plist.apart_pending:
            self._plist.check_apart(params, self.state)
        return counts

    # --- state dicts -----------------------------------------------------------

    def state_dict(self, to_host: bool = False, to_torch: bool = False,
                   dequantize: bool = False) -> dict[str, Any]:
        """The optimizer's state in ``torch.optim``'s layout.

        ``{"state": {index: {...}}, "param_groups": [{...hyperparameters...,
        "params": [indices]}]}``. Like torch's, the arrays in it are the live
        state (not copies): pickle it, or ``copy.deepcopy`` it, to keep a
        snapshot while training goes on (GPU state: use ``to_host=True``;
        numba's device arrays can be neither pickled nor deep-copied).

        ``to_host=True`` gives NumPy copies of the state arrays instead (of
        GPU state: copied once the GPU has finished its work), to save or
        inspect; ``to_torch=True`` gives ``torch.Tensor`` copies (on the
        parameters' device), which ``torch.optim``'s ``load_state_dict``
        takes (it needs PyTorch). ``load_state_dict`` takes any of them.

        Reduced-precision state (``state_dtype``) is given as stored, with
        its ``"state_dtype"`` (bfloat16 as its uint16 bits; int8 and int4 as
        codes and ``"<key>_absmax"``): loading it back resumes bit for bit.
        ``dequantize=True`` gives float32 arrays in torch's layout instead,
        and so does ``to_torch=True`` (a torch optimizer would take stored
        codes for values).
        """
        with self._lock:
            self._sync()
            return _state_io.build(self, to_host=to_host, to_torch=to_torch,
                                   dequantize=dequantize)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or torch's, for the same optimizer).

        Arrays (NumPy, GPU, or torch tensors of any float dtype) are copied in,
        cast to each parameter's dtype, to where the parameters live. The dict
        is checked whole before anything changes: a bad one raises and leaves
        the optimizer as it was.
        """
        with self._lock:
            self._sync()
            params = self._plist.current_views(self.state)
            new_groups, new_state = _state_io.parse(self, state_dict, params)
            # Everything is checked: commit.
            for group, new_group in zip(self.param_groups, new_groups):
                group.update(new_group)
            self._replay = None
            self.state.clear()
            self.state.update(new_state)
            self._plist.detached.clear()
            self._hyper_cache.clear()

    def _required_state(self, state: dict, hyper: dict) -> Iterable[str]:
        """The state keys a loaded parameter state must have."""
        return self.spec.state_keys

    # Of those, the ones a step makes when they are missing (amsgrad's maximum,
    # when amsgrad is switched on after the first step).
    _MADE_BY_STEP: tuple[str, ...] = ()

    _RULE: str  # the update rule: "sgd", "adagrad" or "adam"

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines + [")"])


def _plain_fit(g: Any, p: Any) -> bool:
    """Whether gradient ``g`` is already what ``check_grad`` would return for
    host parameter ``p`` (the common case, checked without building names)."""
    return (type(g) is np.ndarray and type(p) is np.ndarray and g.shape == p.shape
            and g.dtype == p.dtype and g.flags.c_contiguous)
