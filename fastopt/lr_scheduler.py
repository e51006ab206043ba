"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s names, arguments and values.

Each scheduler takes an optimizer (any object with torch-style
``param_groups``: a list of dicts with an ``"lr"``; every fastopt optimizer)
and sets each group's ``"lr"`` at construction and at every ``step()``.
Call ``sched.step()`` after ``opt.step(...)``, once per epoch or per
iteration, as with torch. The values are torch's: the same recursions
(a scheduler scales the group's current ``lr``, so schedulers compose as in
torch) and the same closed forms where torch uses them, so they agree with
torch's to rounding.

``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``CosineAnnealingLR``,
``LinearLR``, ``OneCycleLR``, ``LambdaLR``, ``SequentialLR`` and
``CosineAnnealingWarmRestarts``; each has ``step()``, ``get_last_lr()``,
``state_dict()`` / ``load_state_dict()``, ``last_epoch`` and ``base_lrs``
(except ``SequentialLR``, as torch's: its schedulers have theirs), and the first scheduler made on an optimizer records each group's starting
rate as ``group["initial_lr"]``, as torch does. Custom schedules subclass
:class:`LRScheduler` and implement ``get_lr()``.

These are written here because the schedule libraries for array code
(optax's schedules, for instance) are JAX functions of the step count, with
other names and values than torch's, and neither NumPy nor SciPy has any.

Example::

    >>> import numpy as np, fastopt
    >>> from fastopt.lr_scheduler import CosineAnnealingLR
    >>> w = np.zeros(3)
    >>> opt = fastopt.SGD([w], lr=0.1)
    >>> sched = CosineAnnealingLR(opt, T_max=4)
    >>> for _ in range(4):
    ...     opt.step([np.ones(3)])
    ...     sched.step()
    >>> [round(lr, 6) for lr in sched.get_last_lr()]
    [0.0]
"""

from __future__ import annotations

import types
from bisect import bisect_right
from typing import Any, Callable, Sequence

from ._lr_base import LRScheduler, _groups, _int
from ._lr_decay import (CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, LinearLR,
                        MultiStepLR, StepLR)
from ._lr_onecycle import OneCycleLR

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
           "SequentialLR"]


class LambdaLR(LRScheduler):
    """Each group's rate is its initial rate times ``lr_lambda(last_epoch)``.

    Parameters
    ----------
    optimizer : optimizer
    lr_lambda : callable or list of callables
        ``f(epoch) -> factor``, one for all groups or one per group.
    last_epoch : int
        See :class:`LRScheduler`.

    ``state_dict()`` holds, for each function that is a callable object (not
    a plain function or lambda), a copy of its ``__dict__``, as torch's does.
    """

    def __init__(self, optimizer: Any, lr_lambda: Callable[[int], float] | Sequence[Callable],
                 last_epoch: int = -1) -> None:
        n = len(_groups(optimizer))
        lambdas: list[Any] = (list(lr_lambda) if isinstance(lr_lambda, (list, tuple))
                              else [lr_lambda] * n)
        if len(lambdas) != n:
            raise ValueError(f"lr_lambda has {len(lambdas)} functions, the optimizer has "
                             f"{n} param_groups")
        for k, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda[{k}] must be callable, got {type(fn).__name__}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]

    _NOT_IN_STATE = ("optimizer", "lr_lambdas")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def _check_state(self, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        saved = state_dict.get("lr_lambdas")
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"state_dict['lr_lambdas'] must be a list of "
                             f"{len(self.lr_lambdas)} entries")
        for k, (fn, attrs) in enumerate(zip(self.lr_lambdas, saved)):
            if attrs is not None and (not isinstance(attrs, dict)
                                      or isinstance(fn, types.FunctionType)):
                raise TypeError(f"state_dict['lr_lambdas'][{k}] must be None, or a dict of "
                                "attributes for a callable object")
        loaded = super()._check_state({k: v for k, v in state_dict.items() if k != "lr_lambdas"})
        return {**loaded, "lr_lambdas": saved}

    def _load(self, loaded: dict[str, Any]) -> None:
        saved = loaded.pop("lr_lambdas")
        super()._load(loaded)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)



def _milestone_list(name: str, value: Any, n: int) -> list[int]:
    """``n`` steps (ints >= 0) at which SequentialLR hands over."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of ints, got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name}: {n + 1} schedulers need {n} milestones, got {len(value)}")
    return [_int(f"{name}[{k}]", m, 0) for k, m in enumerate(value)]


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at each of ``milestones``.

    At a milestone the next scheduler starts from its own beginning (its
    closed form at step 0, from the initial rates), as torch's does.

    Parameters
    ----------
    optimizer : optimizer
        The optimizer every scheduler in ``schedulers`` was made on.
    schedulers : list of LRScheduler
        Made on ``optimizer`` just before this (their construction steps
        are undone).
    milestones : list of int
        ``len(schedulers) - 1`` increasing steps.
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        if not isinstance(schedulers, (list, tuple)) or not schedulers:
            raise ValueError("schedulers must be a non-empty list of schedulers")
        for k, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, SequentialLR):
                raise TypeError(f"schedulers[{k}] must be a fastopt.lr_scheduler scheduler "
                                f"(not a SequentialLR), got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"schedulers[{k}] was made on another optimizer")
        ms = _milestone_list("milestones", milestones, len(schedulers) - 1)
        start = _int("last_epoch", last_epoch, -1)
        for k, group in enumerate(groups):
            if "initial_lr" not in group:
                raise ValueError(f"param_groups[{k}] has no 'initial_lr'")
        # Everything is checked: write.
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self._milestones = ms
        self.last_epoch = start + 1
        for group in groups:
            group["lr"] = group["initial_lr"]
        for s in self._schedulers:  # undo the step each took when it was made
            s.last_epoch -= 1
        first = self._schedulers[bisect_right(ms, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        k = bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[k]
        if k > 0 and self._milestones[k - 1] == self.last_epoch:
            s._set_lrs(0)
        else:
            s.step()
        self._last_lr = s.get_last_lr()

    _NOT_IN_STATE = ("optimizer", "_schedulers")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _check_state(self, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        saved = state_dict.get("_schedulers")
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self._schedulers):
            raise ValueError(f"state_dict['_schedulers'] must be a list of "
                             f"{len(self._schedulers)} scheduler states")
        loaded = super()._check_state(state_dict)
        loaded["_milestones"] = _milestone_list("state_dict['_milestones']",
                                                loaded["_milestones"], len(self._schedulers) - 1)
        # Every nested state is checked before any is loaded.
        nested = []
        for k, (s, sub) in enumerate(zip(self._schedulers, saved)):
            try:
                nested.append(s._check_state(sub))
            except (TypeError, ValueError) as e:
                raise type(e)(f"state_dict['_schedulers'][{k}]: {e}") from None
        return {**loaded, "_schedulers": nested}

    def _load(self, loaded: dict[str, Any]) -> None:
        nested = loaded.pop("_schedulers")
        for s, sub in zip(self._schedulers, nested):
            s._load(sub)
        super()._load(loaded)
