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


import inspect
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from . import _checks as C
from . import _cuda
from . import _spec
from . import _state_io
from . import functional as F
from ._dispatch import new_like
from ._params import ParamList
from .flat import FlatParams, FlatSegment

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


class Optimizer:
    """Base class: parameter groups, the step, state dicts.

    A subclass names its specification (``spec``: hyperparameters, defaults,
    ranges, rules and state keys, see ``fastopt._spec``), from which its
    constructor's signature is made, and implements two hooks:
    ``_new_state(p, hyper)`` (a parameter's state before its first step) and
    ``_update(p, g, inv_scale, state, hyper)`` (one step of one parameter,
    nothing checked). Optional hooks: ``_group_added`` (Adagrad creates its
    state with the group) and ``_required_state`` (which state keys a
    loaded state must have).

    State follows the parameter object, not its position: ``param_groups``
    and each group's ``"params"`` may be edited between steps (reordered,
    shortened, extended, entries replaced), as with ``torch.optim``. Every
    step checks the parameter list again when it has changed, and checks that
    each parameter still fits its state, before anything is written.
    ``opt.state`` is keyed by the parameters' current positions.
    """

    spec: _spec.Spec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            target = inspect.Parameter("target", inspect.Parameter.KEYWORD_ONLY, default=None)
            cls.__signature__ = inspect.Signature([params, *cls.spec.parameters(), target])

    def __init__(self, params: Any, *args: Any, target: str | None = None, **hyperparameters: Any):
        """See the class's docstring; the hyperparameters are the spec's."""
        spec = self.spec
        try:
            bound = inspect.Signature(spec.parameters()).bind(*args, **hyperparameters)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}(): {e}") from None
        bound.apply_defaults()
        self.target = C.check_target(target)
        self.defaults = {**spec.defaults, **bound.arguments}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._lock = threading.RLock()  # one step, state dict or group change at a time
        self._plist = ParamList(type(self).__name__, self.target)
        self._hyper_cache: dict[int, tuple] = {}  # group index -> (typed values, checked dict)
        for group in _groups(params):
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
            self._plist.sync(groups, self.state, self.defaults, self._check_fits,
                             new_group=len(self.param_groups),
                             before_commit=lambda: group.update(self.spec.check(group)))
            self.param_groups.append(group)
            n = len(group["params"])
            self._hyper_cache.clear()
            self._group_added(group, len(self._plist.params) - n, self._plist.views[-n:])

    def _group_added(self, group: dict, first: int, views: list) -> None:
        """Hook run after a group is added; ``views`` are the group's parameters
        as the kernels take them, the first at index ``first``."""

    def _sync(self) -> None:
        """Re-check the parameter list if ``param_groups`` were edited."""
        if not self._plist.unchanged(self.param_groups):
            self._plist.sync(self.param_groups, self.state, self.defaults, self._check_fits)
            self._hyper_cache.clear()

    def _check_fits(self, i: int, p: Any, state: dict | None) -> None:
        """Parameter ``i`` (as the kernels take it) has the shape and dtype of its state."""
        for key in self.spec.state_keys:
            a = state.get(key) if state else None
            if a is not None and (a.shape != p.shape or a.dtype != p.dtype):
                raise ValueError(f"params[{i}] is {p.dtype}{list(p.shape)}, but its state "
                                 f"'{key}' is {a.dtype}{list(a.shape)}: the parameter changed "
                                 "after its first step; give the optimizer a new array instead")

    # --- stepping ------------------------------------------------------------

    def step(self, grads: Sequence[Any] | None = None, *, check_finite: bool = False,
             grad_scale: float | None = None) -> bool | None:
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

        Returns
        -------
        bool or None
            With ``check_finite``, whether the step was taken; else None
            (non-finite values propagate, as in torch).
        """
        with self._lock:
            self._sync()
            check_finite = C.check_flag("check_finite", check_finite)
            params = self._plist.current_views(self.state, self._check_fits)
            inv_scale = C.check_grad_scale(grad_scale, {p.dtype for p in params})
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
            checked = [None if g is None else C.check_grad(names.format(i), g, p, f"params[{i}]")
                       for i, (g, p) in enumerate(zip(grads, params))]
            for i, (g, p) in enumerate(zip(checked, params)):
                if g is None:
                    continue
                if isinstance(g, np.ndarray):
                    if np.may_share_memory(g, p):
                        raise ValueError(f"{names.format(i)} shares memory with params[{i}]")
                else:
                    C.check_no_overlap([(names.format(i), g), (f"params[{i}]", p)])
            return self._apply(params, checked, inv_scale, check_finite)

    def _checked_hypers(self) -> list[dict[str, Any]]:
        """Every group's checked hyperparameters. A group whose values (and their
        types) are the ones checked at the last step is not checked again."""
        cache = self._hyper_cache
        hypers = []
        for k, group in enumerate(self.param_groups):
            key = _hyper_key(group)
            cached = cache.get(k)
            if key is None or cached is None or cached[0] != key:
                try:
                    checked = self.spec.check(group)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"param_groups[{k}]: {e}") from None
                cached = cache[k] = (key, checked)
            hypers.append(cached[1])
        return hypers

    def _apply(self, params: list, grads: list, inv_scale: float, check_finite: bool) -> bool | None:
        """Check the hyperparameters (and the gradients' values, with
        ``check_finite``), then step every parameter with a gradient."""
        hypers = self._checked_hypers()
        if check_finite and not all(F.all_finite(g, inv_scale, self.target)
                                    for g in grads if g is not None):
            return False
        # Everything is checked: from here on, nothing raises. ``params`` are
        # the arrays as the kernels take them (GPU arrays as numba views).
        i = 0
        for group, hyper in zip(self.param_groups, hypers):
            for _ in group["params"]:
                g = grads[i]
                if g is not None:
                    p = params[i]
                    state = self.state.get(i)
                    if state is None:
                        state = self.state[i] = self._new_state(p, hyper)
                    self._update(p, g, inv_scale, state, hyper)
                i += 1
        return True if check_finite else None

    # --- state dicts -----------------------------------------------------------

    def state_dict(self, to_host: bool = False, to_torch: bool = False) -> dict[str, Any]:
        """The optimizer's state in ``torch.optim``'s layout.

        ``{"state": {index: {...}}, "param_groups": [{...hyperparameters...,
        "params": [indices]}]}``. Like torch's, the arrays in it are the live
        state (not copies): pickle it, or ``copy.deepcopy`` it, to keep a
        snapshot while training goes on.

        ``to_host=True`` gives NumPy copies of the state arrays instead (of
        GPU state: copied once the GPU has finished its work), to save or
        inspect; ``to_torch=True`` gives ``torch.Tensor`` copies (on the
        parameters' device), which ``torch.optim``'s ``load_state_dict``
        takes (it needs PyTorch). ``load_state_dict`` takes any of them.
        """
        with self._lock:
            self._sync()
            return _state_io.build(self, to_host=to_host, to_torch=to_torch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or torch's, for the same optimizer).

        Arrays (NumPy, GPU, or torch tensors of any float dtype) are copied in,
        cast to each parameter's dtype, to where the parameters live. The dict
        is checked whole before anything changes: a bad one raises and leaves
        the optimizer as it was.
        """
        with self._lock:
            self._sync()
            params = self._plist.current_views(self.state, self._check_fits)
            new_groups, new_state = _state_io.parse(self, state_dict, params)
            # Everything is checked: commit.
            for group, new_group in zip(self.param_groups, new_groups):
                group.update(new_group)
            self.state.clear()
            self.state.update(new_state)
            self._plist.detached.clear()
            self._hyper_cache.clear()

    def _required_state(self, state: dict, hyper: dict) -> Iterable[str]:
        """The state keys a loaded parameter state must have."""
        return self.spec.state_keys

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines + [")"])


def _groups(params: Any) -> list[dict[str, Any]]:
    """The constructor's ``params`` as a list of group dicts."""
    if isinstance(params, (FlatParams, FlatSegment)):
        params = [params]
    if isinstance(params, np.ndarray) or _cuda.is_cuda_array(params):
        raise TypeError("params must be a list of arrays or of parameter groups, "
                        "not a single array (wrap it in a list)")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be a list of arrays or of parameter groups, "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(g, dict) for g in params):
        return params
    if not any(isinstance(g, dict) for g in params):
        return [{"params": params}]
    raise TypeError("params mixes arrays and parameter-group dicts")


_CACHEABLE = (float, int, bool, str, type(None))


def _hyper_key(group: dict[str, Any]) -> tuple | None:
    """A group's hyperparameters with their types, to compare with the last
    checked ones (``0 == False`` and ``1 == True`` must not count as equal),
    or None when a value is of a kind that is checked at every step."""
    key = []
    for name, value in group.items():
        if name == "params":
            continue
        kind = type(value)
        if kind in _CACHEABLE:
            key.append((name, kind, value))
        elif kind in (tuple, list) and all(type(x) in _CACHEABLE for x in value):
            key.append((name, kind, tuple((type(x), x) for x in value)))
        else:
            return None
    return tuple(key)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum (``torch.optim.SGD``).

    See :func:`fastopt.functional.sgd` for the update rule. The momentum
    buffer is created on a parameter's first step (it is that step's
    gradient); state ``{"momentum_buffer"}`` exists only with momentum.

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
        F.sgd_update(p, g, buf, inv_scale, h["lr"], h["momentum"], h["dampening"], h["weight_decay"],
                     h["nesterov"], h["maximize"], first, self.target)

    def _required_state(self, state, hyper):
        return ()


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``); see :func:`fastopt.functional.adagrad`.

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
        F.adagrad_update(p, g, state["sum"], inv_scale, state["step"], h["lr"], h["lr_decay"],
                         h["weight_decay"], h["eps"], h["maximize"], self.target)


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``); see :func:`fastopt.functional.adam`.

    ``decoupled_weight_decay=True`` makes it AdamW. State ``{"step",
    "exp_avg", "exp_avg_sq"}`` (and ``"max_exp_avg_sq"`` with amsgrad) is
    created, zero-filled, on a parameter's first step.

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
        F.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                      inv_scale, state["step"], h["lr"], beta1, beta2, h["eps"], h["weight_decay"],
                      h["amsgrad"], h["maximize"], h["decoupled_weight_decay"], self.target)

    def _required_state(self, state, hyper):
        if hyper["amsgrad"] and state["step"] > 0:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, default 1e-2.

    Each step first scales the parameter by ``1 - lr * weight_decay``.
    ``decoupled_weight_decay`` is always True: a group that sets it False is
    refused, and a loaded state dict keeps it True (as torch's AdamW does),
    whatever the dict says.
    """

    spec = _spec.ADAMW
