"""The base of ``fastopt.lr_scheduler``: :class:`LRScheduler` (the step, the
``lr`` writes, state dicts) and the argument checks every schedule runs
before it writes anything."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable


# --- argument checks (all run before anything is written) ----------------------

def _real(name: str, value: Any, low: float | None = None, high: float | None = None,
          low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _groups(optimizer: Any) -> list[dict]:
    """The optimizer's parameter groups, checked to hold real ``lr`` values."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"optimizer must have param_groups (a non-empty list of dicts), "
                        f"got {type(optimizer).__name__}")
    for k, group in enumerate(groups):
        _real(f"optimizer.param_groups[{k}]['lr']", group.get("lr"))
    return groups


def _per_group(name: str, value: Any, n: int, **limits: Any) -> list[float]:
    """One real per group: ``value`` repeated, or a list/tuple of ``n`` values."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values, the optimizer has {n} param_groups")
        return [_real(f"{name}[{k}]", v, **limits) for k, v in enumerate(value)]
    return [_real(name, value, **limits)] * n


def _last_epoch(last_epoch: Any, groups: list[dict], needs_initial_lr: bool = True) -> int:
    last_epoch = _int("last_epoch", last_epoch, -1)
    if last_epoch != -1 and needs_initial_lr:
        for k, group in enumerate(groups):
            if "initial_lr" not in group:
                raise ValueError(f"last_epoch={last_epoch} resumes a schedule, but "
                                 f"param_groups[{k}] has no 'initial_lr' (load the "
                                 "optimizer's state first, or start from last_epoch=-1)")
    return last_epoch


# --- the base class -----------------------------------------------------------------

class LRScheduler:
    """Base class: sets each group's ``lr`` from ``get_lr()`` at every ``step()``.

    Parameters
    ----------
    optimizer : optimizer
        Any object with ``param_groups`` (a list of dicts with ``"lr"``).
    last_epoch : int
        The index of the last step taken; -1 (the default) starts the
        schedule, and records each group's ``lr`` as ``"initial_lr"`` (unless
        a group has one already). A larger value resumes a schedule and needs
        ``"initial_lr"`` in every group.

    Attributes
    ----------
    base_lrs : list of float
        Each group's ``initial_lr``.
    last_epoch : int
        The number of ``step()`` calls since the start (0 after construction).

    Subclasses implement ``get_lr()``: each group's new rate, with
    ``self.last_epoch`` already advanced; ``self._is_initial`` is True during
    the step that the constructor takes. An optional ``_closed_form_lr()``
    gives the rates at ``last_epoch`` from ``base_lrs`` alone (what
    :class:`SequentialLR` uses when it hands over to the next scheduler).
    """

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        last_epoch = _last_epoch(last_epoch, groups)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """The step a scheduler takes when it is made (or restarted by SequentialLR)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """Each group's learning rate for the step ``self.last_epoch`` (subclasses)."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one step and set every group's ``lr``."""
        self._step_count += 1
        self._set_lrs(None)

    def _set_lrs(self, epoch: int | None) -> None:
        if epoch is None:
            self.last_epoch += 1
            lrs = self.get_lr()
        else:
            self.last_epoch = epoch
            closed = getattr(self, "_closed_form_lr", None)
            lrs = closed() if closed is not None else self.get_lr()
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise ValueError(f"the optimizer has {len(groups)} param_groups, the scheduler "
                             f"was made for {len(lrs)}")
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates the last ``step()`` set, one per group."""
        return list(self._last_lr)

    def _lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    # --- state dicts -----------------------------------------------------------

    _NOT_IN_STATE: tuple[str, ...] = ("optimizer",)

    # A schedule's own attributes (its arguments, and what it derives from
    # them), each with its check ``check(name, value) -> value to keep``:
    # the constructor sets them through ``_set_checked`` and
    # ``load_state_dict`` runs the same checks on a loaded state.
    _CHECKS: dict[str, Callable[[str, Any], Any]] = {}

    def _set_checked(self, **values: Any) -> None:
        """Check ``values`` (attribute -> value) with ``_CHECKS``, then set them all."""
        checked = {name: self._CHECKS[name](name, value) for name, value in values.items()}
        self.__dict__.update(checked)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: its attributes, without the optimizer (torch's layout)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_IN_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (or from the same torch scheduler's).

        The dict must hold every entry this scheduler's state has; entries
        it does not know (torch's own bookkeeping) are ignored. Checked whole
        before anything changes.
        """
        self._load(self._check_state(state_dict))

    def _check_state(self, state_dict: Any) -> dict[str, Any]:
        """The attributes ``state_dict`` sets, checked as the constructor checks
        them (raises on anything wrong; changes nothing)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        own = LRScheduler.state_dict(self)  # the plain attributes
        missing = sorted(k for k in own if k not in state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {missing} (is it from a {type(self).__name__}?)")
        n = len(self.optimizer.param_groups)

        def rates(name: str, value: Any) -> list[float]:
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise ValueError(f"{name} must be a list of {n} learning rates")
            return [_real(f"{name}[{k}]", v) for k, v in enumerate(value)]

        common: dict[str, Callable[[str, Any], Any]] = {
            "last_epoch": lambda name, v: _int(name, v, -1),
            "_step_count": lambda name, v: _int(name, v, 0),
            "_is_initial": _flag, "base_lrs": rates, "_last_lr": rates}
        checks = {**common, **self._CHECKS}
        return {key: checks[key](f"state_dict[{key!r}]", state_dict[key]) if key in checks
                else state_dict[key] for key in own}

    def _load(self, loaded: dict[str, Any]) -> None:
        self.__dict__.update(loaded)

