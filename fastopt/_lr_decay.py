"""The decaying schedules of ``fastopt.lr_scheduler``: step, multi-step,
exponential, cosine (with warm restarts) and linear, torch's recursions and
closed forms."""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections import Counter
from typing import Any, Sequence

from ._lr_base import LRScheduler, _int, _real


def _at_least_1(name: str, value: Any) -> int:
    return _int(name, value, 1)


def _milestones(name: str, value: Any) -> Counter:
    """Milestone steps (an iterable of ints >= 0; a Counter's with their counts)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be an iterable of ints, got {type(value).__name__}")
    steps = value.elements() if isinstance(value, Counter) else value
    return Counter(_int(f"{name}[{k}]", m, 0) for k, m in enumerate(steps))


def _period(name: str, value: Any) -> float:
    """A positive period: an int >= 1 or a real > 0."""
    if isinstance(value, numbers.Integral):
        return _int(name, value, 1)
    return _real(name, value, 0, low_open=True)


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
        self._set_checked(step_size=step_size, gamma=gamma)
        super().__init__(optimizer, last_epoch)

    _CHECKS = {"step_size": _at_least_1, "gamma": _real}
    step_size: int
    gamma: float

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
        self._set_checked(milestones=milestones, gamma=gamma)
        super().__init__(optimizer, last_epoch)

    _CHECKS = {"milestones": _milestones, "gamma": _real}
    milestones: Counter
    gamma: float

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
        self._set_checked(gamma=gamma)
        super().__init__(optimizer, last_epoch)

    _CHECKS = {"gamma": _real}
    gamma: float

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
        self._set_checked(T_max=T_max, eta_min=eta_min)
        super().__init__(optimizer, last_epoch)

    _CHECKS = {"T_max": _period, "eta_min": _real}
    T_max: float
    eta_min: float

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
        self._set_checked(start_factor=start_factor, end_factor=end_factor,
                          total_iters=total_iters)
        super().__init__(optimizer, last_epoch)

    _CHECKS = {"start_factor": lambda name, v: _real(name, v, 0, 1, low_open=True),
               "end_factor": lambda name, v: _real(name, v, 0, 1),
               "total_iters": _at_least_1}
    start_factor: float
    end_factor: float
    total_iters: int

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
        self._set_checked(T_0=T_0, T_mult=T_mult, eta_min=eta_min)
        self.T_i = self.T_0
        self.T_cur = _int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    # (T_i, the current period, and T_cur, the step within it, as a state sets them)
    _CHECKS = {"T_0": _at_least_1, "T_mult": _at_least_1, "eta_min": _real,
               "T_i": _at_least_1, "T_cur": lambda name, v: _int(name, v, -1)}
    T_0: int
    T_mult: int
    eta_min: float

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

