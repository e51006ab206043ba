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


from . import _spec
from . import _update as U
from ._arrays import new_like
from ._optimizer import Optimizer

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


class SGD(Optimizer):
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

    def _new_state(self, p, h):
        return {}

    def _update(self, p, g, inv_scale, state, h):
        buf = state.get("momentum_buffer")
        first = buf is None
        if h["momentum"] != 0 and first:
            buf = state["momentum_buffer"] = new_like(p)
        U.sgd(p=p, g=g, buf=buf, inv_scale=inv_scale, lr=h["lr"], momentum=h["momentum"],
              dampening=h["dampening"], weight_decay=h["weight_decay"], nesterov=h["nesterov"],
              maximize=h["maximize"], first_step=first, target=self.target)

    def _required_state(self, state, hyper):
        return ()


class Adagrad(Optimizer):
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

    def _group_added(self, group, first, views):
        for k, p in enumerate(views):
            self.state[first + k] = self._new_state(p, group)

    def _new_state(self, p, h):
        return {"step": 0, "sum": new_like(p, h["initial_accumulator_value"])}

    def _update(self, p, g, inv_scale, state, h):
        state["step"] += 1
        U.adagrad(p=p, g=g, state_sum=state["sum"], inv_scale=inv_scale, step=state["step"],
                  lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"], eps=h["eps"],
                  maximize=h["maximize"], target=self.target)


class Adam(Optimizer):
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

    def _new_state(self, p, h):
        state = {"step": 0, "exp_avg": new_like(p, 0), "exp_avg_sq": new_like(p, 0)}
        if h["amsgrad"]:
            state["max_exp_avg_sq"] = new_like(p, 0)
        return state

    def _update(self, p, g, inv_scale, state, h):
        if h["amsgrad"] and "max_exp_avg_sq" not in state:
            # amsgrad switched on after this parameter's first step.
            state["max_exp_avg_sq"] = new_like(p, 0)
        state["step"] += 1
        beta1, beta2 = h["betas"]
        U.adam(p=p, g=g, exp_avg=state["exp_avg"], exp_avg_sq=state["exp_avg_sq"],
               max_exp_avg_sq=state.get("max_exp_avg_sq"), inv_scale=inv_scale, step=state["step"],
               lr=h["lr"], beta1=beta1, beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"],
               amsgrad=h["amsgrad"], maximize=h["maximize"],
               decoupled_weight_decay=h["decoupled_weight_decay"], target=self.target)

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
