"""Optimizer classes with ``torch.optim``'s names, defaults and state-dict layout.

``params`` is a list of arrays, or a list of parameter groups
(``{"params": [...], "lr": ...}``) whose missing hyperparameters take the
optimizer's defaults, or a ``FlatParams``. ``opt.step(grads)`` takes one
gradient per parameter, in order (groups in order); a ``None`` gradient
leaves its parameter and state untouched, as torch skips a parameter whose
``.grad`` is None. Parameters from a ``FlatParams`` (the whole buffer, or a
``segment`` of it in a group) are one parameter each, whose gradient is the
FlatParams' gradient buffer: with only such parameters, ``opt.step()`` needs
no argument.
Hyperparameters in ``opt.param_groups`` may be changed between steps (that
is how learning-rate schedules work); they are re-checked at every step.
So may the parameter lists (reordered, shortened, extended, entries
replaced): a parameter's state follows the parameter object, as in torch.
One optimizer may be used from several threads (its steps and state dicts
take turns); two optimizers that share a parameter must not be stepped at
the same time.

The arrays are all NumPy arrays, or all GPU arrays (numba device arrays,
CuPy arrays, PyTorch CUDA tensors, a ``FlatParams(..., device="cuda")``):
then the CUDA kernels run, the state is allocated on the GPU, and a step
launches its kernels without copying or waiting (README, "CUDA").
"""


from typing import Any

import numpy as np

from . import _spec
from . import _state_dtype as D
from . import _update as U
from ._arrays import host_array, new_like, place_like
from ._optimizer import Optimizer

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


def _bf16_args(p: Any, h: dict, state: dict) -> dict[str, Any]:
    """The update's arguments for a bfloat16 parameter (none for others):
    its float32 master copy, made from the parameter when
    ``master_weights`` is switched on, or the copy removed or set to None
    (dropped when it is switched off), and, where the optimizer counts
    steps, its stochastic rounding."""
    if not D.is_bfloat16(p):
        return {}
    if not h["master_weights"]:
        state.pop("master", None)
    elif state.get("master") is None:
        state["master"] = p.astype(np.float32)
    out = {"master": state.get("master")}
    if "stochastic_rounding" in h:
        out.update(stochastic=h["stochastic_rounding"],
                   seed=U.rounding_seed(h["rounding_seed"], state["step"], p.size))
    return out


class _Stored(Optimizer):
    """An optimizer whose state may be stored in reduced precision
    (``state_dtype``, see ``_state_dtype``). ``_KERNEL_ARG`` names each state
    key's argument in the update kernel."""

    _KERNEL_ARG: dict[str, str] = {}

    def _checked_hypers(self) -> list[dict[str, Any]]:
        # Whether each group's state_dtype fits its parameters, before any write.
        hypers = super()._checked_hypers()
        i = 0
        for k, (group, h) in enumerate(zip(self.param_groups, hypers)):
            n = len(group["params"])
            if h["state_dtype"] is not None:
                for p in self._plist.views[i:i + n]:
                    D.resolve(h["state_dtype"], p, f"param_groups[{k}]")
            i += n
        return hypers

    def _fresh(self, p: Any, h: dict, key: str, value: float | None = 0.0) -> dict[str, Any]:
        """New state array ``key`` of ``p`` (filled with ``value``), stored as the group says."""
        codec = D.resolve(h["state_dtype"], p)
        if not codec:
            return {key: new_like(p, value, D.plain_dtype(p))}
        return {**D.new(codec, key, p, value or 0.0), "state_dtype": codec}

    def _stored(self, p: Any, h: dict, state: dict) -> tuple[str, dict | None]:
        """The state's codec, after re-storing the state if the group's
        ``state_dtype`` changed since; and the kernel's absmax arrays."""
        want = D.resolve(h["state_dtype"], p)
        have = state.get("state_dtype", "")
        if want != have:
            for key in self.spec.state_keys:
                if state.get(key) is None:
                    continue
                values = D.decode(have, key, state, p.shape) if have else host_array(state[key])
                state.pop(key + "_absmax", None)
                state.update(D.encode(want, key, values, p) if want
                             else {key: place_like(p, np.asarray(values, D.plain_dtype(p)))})
            state.pop("state_dtype", None)
            if want:
                state["state_dtype"] = want
        absmax = None
        if want in D.BLOCKWISE:
            absmax = {self._KERNEL_ARG[key]: state[key + "_absmax"]
                      for key in self.spec.state_keys if key + "_absmax" in state}
        return want, absmax


class SGD(_Stored):
    r"""Stochastic gradient descent, with optional momentum (``torch.optim.SGD``).

    {update_rule}

    with learning rate :math:`\eta` (``lr``), momentum :math:`\mu`,
    dampening :math:`\tau` and weight decay :math:`\lambda`; the momentum
    lines apply only when ``momentum`` is not 0.

    Parameters
    ----------
    params : list of arrays, list of parameter groups, or FlatParams
        The arrays to update in place (see the module docstring).
    lr, momentum, dampening, weight_decay, nesterov, maximize
        torch's hyperparameters, with torch's defaults; ``nesterov`` needs
        ``momentum > 0`` and ``dampening == 0``.
    target : None, "serial", "parallel" or "cuda"
        The kernel (None: chosen by where and how large each array is).

    The momentum buffer is created on a parameter's first step (it is that
    step's gradient); state ``{"momentum_buffer"}`` exists only with momentum.

    Example::

        >>> import numpy as np, fastopt
        >>> w = np.zeros(3)
        >>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
        >>> opt.step([np.ones(3)])
        >>> w
        array([-0.1, -0.1, -0.1])
    """

    spec = _spec.SGD
    _KERNEL_ARG = {"momentum_buffer": "buf"}
    _RULE = "sgd"

    def _advance(self, state):
        return state.get("momentum_buffer") is None

    def _new_state(self, p, h):
        return {}

    def _update(self, p, g, inv_scale, state, h):
        first = state.get("momentum_buffer") is None
        codec, absmax = self._stored(p, h, state)  # (the state as the group stores it now,
        if h["momentum"] != 0 and first:  # then a new buffer so stored: it was decoded as
            state.update({k: v for k, v in self._fresh(p, h, "momentum_buffer", None).items()
                          if k != "state_dtype"})  # the old dtype, out of bounds)
            codec, absmax = self._stored(p, h, state)
        return U.sgd(p=p, g=g, buf=state.get("momentum_buffer"), inv_scale=inv_scale, lr=h["lr"],
              **_bf16_args(p, h, state),
              momentum=h["momentum"], dampening=h["dampening"], weight_decay=h["weight_decay"],
              nesterov=h["nesterov"], maximize=h["maximize"], first_step=first,
              target=self.target, codec=codec, absmax=absmax)

    def _required_state(self, state, hyper):
        return ()


class Adagrad(_Stored):
    r"""Adagrad (``torch.optim.Adagrad``).

    {update_rule}

    with :math:`t` the parameter's step count and :math:`\delta` ``lr_decay``.

    Parameters
    ----------
    params : list of arrays, list of parameter groups, or FlatParams
        The arrays to update in place (see the module docstring).
    lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize
        torch's hyperparameters, with torch's defaults.
    target : None, "serial", "parallel" or "cuda"
        The kernel (None: chosen by where and how large each array is).

    State ``{"step", "sum"}`` is created with the optimizer, ``sum`` filled
    with ``initial_accumulator_value``.

    Example::

        >>> import numpy as np, fastopt
        >>> w = np.ones(2)
        >>> opt = fastopt.Adagrad([w], lr=0.5)
        >>> opt.step([np.array([1.0, -2.0])])
        >>> w.round(6)
        array([0.5, 1.5])
    """

    spec = _spec.ADAGRAD
    _KERNEL_ARG = {"sum": "state_sum"}
    _RULE = "adagrad"

    def _advance(self, state):
        state["step"] += 1
        return state["step"]

    def _group_added(self, group, first, views):
        for p in views:  # the state is made now: check its state_dtype now
            D.resolve(group["state_dtype"], p, "the new parameter group")
        for k, p in enumerate(views):  # (a parameter re-added keeps the state it had)
            if not self.state.get(first + k):
                self.state[first + k] = self._new_state(p, group)

    def _new_state(self, p, h):
        return {"step": 0, **self._fresh(p, h, "sum", h["initial_accumulator_value"])}

    def _update(self, p, g, inv_scale, state, h):
        codec, absmax = self._stored(p, h, state)
        state["step"] += 1
        return U.adagrad(p=p, g=g, state_sum=state["sum"], inv_scale=inv_scale, step=state["step"],
                  lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"], eps=h["eps"],
                  maximize=h["maximize"], target=self.target, codec=codec, absmax=absmax,
                  **_bf16_args(p, h, state))


class Adam(_Stored):
    r"""Adam (``torch.optim.Adam``).

    {update_rule}

    with :math:`t` the parameter's step count, :math:`\eta` ``lr`` and
    :math:`\lambda` ``weight_decay``.

    Parameters
    ----------
    params : list of arrays, list of parameter groups, or FlatParams
        The arrays to update in place (see the module docstring).
    lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay
        torch's hyperparameters, with torch's defaults;
        ``decoupled_weight_decay=True`` makes it AdamW.
    target : None, "serial", "parallel" or "cuda"
        The kernel (None: chosen by where and how large each array is).

    State ``{"step", "exp_avg", "exp_avg_sq"}`` (and ``"max_exp_avg_sq"``
    with amsgrad) is created, zero-filled, on a parameter's first step.

    Example::

        >>> import numpy as np, fastopt
        >>> w = np.ones(2, np.float32)
        >>> opt = fastopt.Adam([w], lr=0.1)
        >>> opt.step([np.array([0.5, -2.0], np.float32)])
        >>> w.round(4)
        array([0.9, 1.1], dtype=float32)
    """

    spec = _spec.ADAM
    _KERNEL_ARG = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
                   "max_exp_avg_sq": "max_exp_avg_sq"}
    _RULE = "adam"

    def _advance(self, state):
        state["step"] += 1
        return state["step"]

    def _new_state(self, p, h):
        state = {"step": 0, **self._fresh(p, h, "exp_avg"), **self._fresh(p, h, "exp_avg_sq")}
        if h["amsgrad"]:
            state.update(self._fresh(p, h, "max_exp_avg_sq"))
        return state

    def _update(self, p, g, inv_scale, state, h):
        codec, absmax = self._stored(p, h, state)
        if h["amsgrad"] and state.get("max_exp_avg_sq") is None:
            # amsgrad switched on after this parameter's first step: stored
            # as the rest of the state is now.
            state.update({k: v for k, v in self._fresh(p, h, "max_exp_avg_sq").items()
                          if k != "state_dtype"})
            codec, absmax = self._stored(p, h, state)
        state["step"] += 1
        beta1, beta2 = h["betas"]
        return U.adam(p=p, g=g, exp_avg=state["exp_avg"], exp_avg_sq=state["exp_avg_sq"],
               max_exp_avg_sq=state.get("max_exp_avg_sq"), inv_scale=inv_scale, step=state["step"],
               lr=h["lr"], beta1=beta1, beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"],
               amsgrad=h["amsgrad"], maximize=h["maximize"],
               decoupled_weight_decay=h["decoupled_weight_decay"], target=self.target,
               codec=codec, absmax=absmax, **_bf16_args(p, h, state))

    _MADE_BY_STEP = ("max_exp_avg_sq",)

    def _required_state(self, state, hyper):
        if hyper["amsgrad"] and state["step"] > 0:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, default 1e-2.

    {update_rule}

    (the decoupled line: each step first scales the parameter by
    :math:`1 - \eta\lambda`). Arguments as :class:`Adam`, without
    ``decoupled_weight_decay``.
    ``decoupled_weight_decay`` is always True: a group that sets it False is
    refused, and a loaded state dict keeps it True (as torch's AdamW does),
    whatever the dict says.
    """

    spec = _spec.ADAMW
