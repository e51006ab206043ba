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

