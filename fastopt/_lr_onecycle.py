"""``fastopt.lr_scheduler.OneCycleLR``: the one-cycle policy, with momentum
cycled the other way."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ._lr_base import LRScheduler, _flag, _groups, _int, _last_epoch, _per_group, _real


def _phase(end_step: float, start_lr: str, end_lr: str, start_momentum: str,
           end_momentum: str) -> dict[str, Any]:
    return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr,
            "start_momentum": start_momentum, "end_momentum": end_momentum}


_LR_KEYS = ("initial_lr", "max_lr", "min_lr")
_MOMENTUM_KEYS = ("max_momentum", "base_momentum")


def _phases(name: str, phases: Any) -> list[dict[str, Any]]:
    """The cycle's phases (two, or three), each ending at a real step; their
    rates and momenta are group keys. The first must have steps (it starts at
    step 0, where torch divides by zero otherwise); a later one may have none
    (torch takes ``pct_start=1.0``, a warm-up-only cycle), see ``get_lr``."""
    if not isinstance(phases, list) or len(phases) not in (2, 3):
        raise ValueError(f"{name}: the cycle must be a list of 2 or 3 phases")
    for k, phase in enumerate(phases):
        if not isinstance(phase, dict) or set(phase) != set(_phase(0, "", "", "", "")):
            raise ValueError(f"{name}: phase {k + 1} of the cycle is not a OneCycleLR phase")
        end = _real(f"{name}: phase {k + 1}'s end_step", phase["end_step"])
        if k == 0 and end == 0:
            raise ValueError(f"{name}, phase 1 of the cycle has no steps (it starts and ends "
                             "at step 0); change pct_start or total_steps")
        if (phase["start_lr"] not in _LR_KEYS or phase["end_lr"] not in _LR_KEYS
                or phase["start_momentum"] not in _MOMENTUM_KEYS
                or phase["end_momentum"] not in _MOMENTUM_KEYS):
            raise ValueError(f"{name}: phase {k + 1} of the cycle names unknown group keys")
    return phases


def _strategy(name: str, value: Any) -> str:
    if value not in ("cos", "linear"):
        raise ValueError(f"{name} must be 'cos' or 'linear', got {value!r}")
    return value


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
        _strategy("anneal_strategy", anneal_strategy)
        _flag("cycle_momentum", cycle_momentum)
        _flag("three_phase", three_phase)
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
        up = float(pct * total) - 1
        if three_phase:
            phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(float(2 * pct * total) - 2, "max_lr", "initial_lr", "base_momentum",
                       "max_momentum"),
                _phase(total - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(total - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        _phases(f"with total_steps={total} and pct_start={pct}"
                f"{' (three_phase)' if three_phase else ''}", phases)
        # Everything is checked: write.
        self.optimizer = optimizer
        self.total_steps = total
        self._schedule_phases = phases
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

    _CHECKS = {"total_steps": lambda name, v: _int(name, v, 1), "_schedule_phases": _phases,
               "_anneal_func_type": _strategy, "cycle_momentum": _flag, "use_beta1": _flag}

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
                    # a phase of no steps is at its end (torch divides by zero there)
                    pct = (t - begin) / (end - begin) if end != begin else 1.0
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct))
                    break
                begin = end
        return lrs
