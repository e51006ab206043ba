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
``state_dict()`` / ``load_state_dict()``, ``last_epoch`` and ``base_lrs``,
and the first scheduler made on an optimizer records each group's starting
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

import math
import numbers
import types
from bisect import bisect_right
from collections import Counter
from typing import Any, Callable, Sequence

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
           "SequentialLR"]


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

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: its attributes, without the optimizer (torch's layout)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_IN_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (or from the same torch scheduler's).

        The dict must hold every entry this scheduler's state has; entries
        it does not know (torch's own bookkeeping) are ignored. Checked whole
        before anything changes.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        own = LRScheduler.state_dict(self)  # the plain attributes
        missing = sorted(k for k in own if k not in state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {missing} (is it from a {type(self).__name__}?)")
        _int("state_dict['last_epoch']", state_dict["last_epoch"], -1)
        n = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            if key in own and (not isinstance(state_dict[key], (list, tuple))
                               or len(state_dict[key]) != n):
                raise ValueError(f"state_dict[{key!r}] must be a list of {n} learning rates")
        self._load(state_dict, own)

    def _load(self, state_dict: dict[str, Any], own: dict[str, Any]) -> None:
        for key in own:
            value = state_dict[key]
            self.__dict__[key] = list(value) if isinstance(value, tuple) and key in (
                "base_lrs", "_last_lr") else value


# --- the schedules ------------------------------------------------------------------

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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        saved = state_dict.get("lr_lambdas")
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"state_dict['lr_lambdas'] must be a list of "
                             f"{len(self.lr_lambdas)} entries")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "lr_lambdas"})
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps.

    Parameters
    ----------
    optimizer : optimizer
    step_size : int
        Steps between two decays (>= 1).
    gamma : float
        The factor (default 0.1).
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone (twice at one listed twice).

    Parameters
    ----------
    optimizer : optimizer
    milestones : iterable of int
        The steps at which the rate decays.
    gamma : float
        The factor (default 0.1).
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"milestones must be an iterable of ints, got "
                            f"{type(milestones).__name__}")
        self.milestones = Counter(_int(f"milestones[{k}]", m, 0)
                                  for k, m in enumerate(milestones))
        self.gamma = _real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        times = self.milestones.get(self.last_epoch, 0)
        if times == 0:
            return self._lrs()
        return [lr * self.gamma ** times for lr in self._lrs()]

    def _closed_form_lr(self) -> list[float]:
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma ** passed for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` at every step.

    Parameters
    ----------
    optimizer : optimizer
    gamma : float
        The factor.
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _real("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the initial rate down to ``eta_min`` over ``T_max`` steps.

    .. math::

        \eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})(1 + \cos(\pi t / T_{\max}))

    computed, as torch does, by a recursion on the group's current rate
    (so it composes with other schedulers); past ``T_max`` the rate climbs
    back along the cosine (no restart).

    Parameters
    ----------
    optimizer : optimizer
    T_max : int
        Steps from the initial rate to ``eta_min`` (> 0).
    eta_min : float
        The lowest rate (default 0).
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _int("T_max", T_max, 1) if isinstance(T_max, numbers.Integral) else _real(
            "T_max", T_max, 0, low_open=True)
        self.eta_min = _real("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._lrs()
        if self._step_count == 1 and t > 0:  # resumed at step t
            return [lo + (base - lo) * (1 + math.cos(t * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # leaving the trough: the recursion's ratio is 0/0
            return [lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, self._lrs())]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - lo) + lo for lr in self._lrs()]

    def _closed_form_lr(self) -> list[float]:
        lo = self.eta_min
        return [lo + (base - lo) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the rate by a factor going linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then keep it.

    Parameters
    ----------
    optimizer : optimizer
    start_factor : float
        In (0, 1]; default 1/3.
    end_factor : float
        In [0, 1]; default 1.
    total_iters : int
        Steps of the ramp (>= 1, default 5).
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = _real("start_factor", start_factor, 0, 1, low_open=True)
        self.end_factor = _real("end_factor", end_factor, 0, 1)
        self.total_iters = _int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, a, b, n = self.last_epoch, self.start_factor, self.end_factor, self.total_iters
        if t == 0:
            return [lr * a for lr in self._lrs()]
        if self._is_initial or t > n:
            return self._lrs()
        factor = 1.0 + (b - a) / (n * a + (t - 1) * (b - a))
        return [lr * factor for lr in self._lrs()]

    def _closed_form_lr(self) -> list[float]:
        a, b, n = self.start_factor, self.end_factor, self.total_iters
        return [base * (a + (b - a) * min(n, self.last_epoch) / n) for base in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing restarted every ``T_i`` steps (SGDR), ``T_i`` starting
    at ``T_0`` and multiplied by ``T_mult`` at each restart.

    .. math::

        \eta = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})(1 + \cos(\pi T_{cur} / T_i))

    Parameters
    ----------
    optimizer : optimizer
    T_0 : int
        Steps before the first restart (>= 1).
    T_mult : int
        Growth of the period at each restart (>= 1, default 1).
    eta_min : float
        The lowest rate (default 0).
    last_epoch : int
        See :class:`LRScheduler`.
    """

    def __init__(self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_0 = self.T_i = _int("T_0", T_0, 1)
        self.T_mult = _int("T_mult", T_mult, 1)
        self.eta_min = _real("eta_min", eta_min)
        self.T_cur = _int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lo = self.eta_min
        return [lo + (base - lo) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base in self.base_lrs]

    def step(self) -> None:
        self._step_count += 1
        if self.last_epoch < 0:
            self.T_cur, self.last_epoch = 0, 0
        else:
            self.last_epoch += 1
            self.T_cur += 1
            if self.T_cur >= self.T_i:
                self.T_cur %= self.T_i
                self.T_i *= self.T_mult
        self._set_lrs(self.last_epoch)

    def _closed_form_lr(self) -> list[float]:
        return self.get_lr()


class OneCycleLR(LRScheduler):
    """The one-cycle policy: the rate rises from ``max_lr / div_factor`` to
    ``max_lr`` over the first ``pct_start`` of ``total_steps``, then falls to
    ``initial_lr / final_div_factor`` (``three_phase``: back to the initial
    rate first, then down); momentum (SGD's ``momentum`` or Adam's ``beta1``)
    moves the other way between ``max_momentum`` and ``base_momentum``.

    Parameters
    ----------
    optimizer : optimizer
    max_lr : float or list of float
        The peak rate (one for all groups, or one per group).
    total_steps : int, optional
        The steps in the cycle; or give ``epochs`` and ``steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        ``total_steps = epochs * steps_per_epoch`` when ``total_steps`` is None.
    pct_start : float
        The share of the cycle spent rising (default 0.3).
    anneal_strategy : "cos" or "linear"
    cycle_momentum : bool
        Whether to cycle momentum (needs an optimizer with ``momentum`` or
        ``betas``, as SGD and Adam/AdamW have; set False for Adagrad).
    base_momentum, max_momentum : float or list of float
        Defaults 0.85 and 0.95.
    div_factor, final_div_factor : float
        Defaults 25 and 1e4.
    three_phase : bool
    last_epoch : int
        See :class:`LRScheduler`.

    It sets ``initial_lr``, ``max_lr`` and ``min_lr`` (and ``max_momentum``,
    ``base_momentum``) in each group, as torch does. Stepping past
    ``total_steps`` raises ValueError.
    """

    def __init__(self, optimizer: Any, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        if total_steps is not None:
            total = _int("total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            total = _int("epochs", epochs, 1) * _int("steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError("give total_steps, or both epochs and steps_per_epoch")
        pct = _real("pct_start", pct_start, 0, 1)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        for name, flag in (("cycle_momentum", cycle_momentum), ("three_phase", three_phase)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        n = len(groups)
        max_lrs = _per_group("max_lr", max_lr, n)
        div = _real("div_factor", div_factor, 0, low_open=True)
        final_div = _real("final_div_factor", final_div_factor, 0, low_open=True)
        defaults = getattr(optimizer, "defaults", {})
        if cycle_momentum:
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError(f"cycle_momentum=True needs an optimizer with momentum or "
                                 f"betas; {type(optimizer).__name__} has neither "
                                 "(pass cycle_momentum=False)")
            max_moms = _per_group("max_momentum", max_momentum, n, low=0)
            base_moms = _per_group("base_momentum", base_momentum, n, low=0)
        last_epoch = _last_epoch(last_epoch, groups, needs_initial_lr=False)
        # Everything is checked: write.
        self.optimizer = optimizer
        self.total_steps = total
        up = float(pct * total) - 1
        if three_phase:
            self._schedule_phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(float(2 * pct * total) - 2, "max_lr", "initial_lr", "base_momentum",
                       "max_momentum"),
                _phase(total - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self._schedule_phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(total - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        self._anneal_func_type = anneal_strategy
        if last_epoch == -1:
            for group, peak in zip(groups, max_lrs):
                group["initial_lr"] = peak / div
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = "betas" in defaults
            if last_epoch == -1:
                for group, top, bottom in zip(groups, max_moms, base_moms):
                    self._set_momentum(group, top)
                    group["max_momentum"] = top
                    group["base_momentum"] = bottom
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict, value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"stepped {t} times; the cycle has total_steps={self.total_steps}")
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            begin = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if t <= end or i == last:
                    pct = (t - begin) / (end - begin)
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct))
                    break
                begin = end
        return lrs


def _phase(end_step: float, start_lr: str, end_lr: str, start_momentum: str,
           end_momentum: str) -> dict[str, Any]:
    return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr,
            "start_momentum": start_momentum, "end_momentum": end_momentum}


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
        if not isinstance(milestones, (list, tuple)):
            raise TypeError(f"milestones must be a list of ints, got {type(milestones).__name__}")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{len(schedulers)} schedulers need {len(schedulers) - 1} "
                             f"milestones, got {len(milestones)}")
        ms = [_int(f"milestones[{k}]", m, 0) for k, m in enumerate(milestones)]
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        saved = state_dict.get("_schedulers")
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self._schedulers):
            raise ValueError(f"state_dict['_schedulers'] must be a list of "
                             f"{len(self._schedulers)} scheduler states")
        own = super().state_dict()
        missing = sorted(k for k in own if k not in state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {missing} (is it from a SequentialLR?)")
        # Check every nested state (a failing one raises before any is loaded).
        for k, (s, sub) in enumerate(zip(self._schedulers, saved)):
            if not isinstance(sub, dict) or any(key not in sub for key in s.state_dict()):
                raise ValueError(f"state_dict['_schedulers'][{k}] is not a "
                                 f"{type(s).__name__}'s state")
        for s, sub in zip(self._schedulers, saved):
            s.load_state_dict(sub)
        self._load(state_dict, own)
