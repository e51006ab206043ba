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

The arrays are all NumPy arrays, or all GPU arrays (numba device arrays,
CuPy arrays, PyTorch CUDA tensors, a ``FlatParams(..., device="cuda")``):
then the CUDA kernels run, the state is allocated on the GPU, and a step
launches its kernels without copying or waiting (README, "CUDA").
"""


import numpy as np

from . import _checks as C
from . import _cuda
from . import _update as U
from ._dispatch import host_array, new_like, place_like
from .flat import FlatParams, FlatSegment

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


class Optimizer:
    """Base class: parameter groups, per-parameter state, state dicts.

    Subclasses set ``_state_keys`` (the arrays of a parameter's state) and
    implement ``_check_group`` (validate and normalise a group's
    hyperparameters), ``_new_state`` and ``_update``.
    """

    _state_keys = ()
    _has_step = True

    def __init__(self, params, defaults, *, target=None):
        self.target = C.check_target(target)
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._flat_grads = []  # per parameter: its FlatParams gradient view, or None
        self._hyper_cache = {}  # group index -> (hyperparameter values, checked dict)
        self._on_gpu = None    # whether the parameters are GPU arrays (set by the first group)
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
            groups = params
        elif not any(isinstance(g, dict) for g in params):
            groups = [{"params": params}]
        else:
            raise TypeError("params mixes arrays and parameter-group dicts")
        for group in groups:
            self.add_param_group(group)

    # --- groups --------------------------------------------------------------

    def _all_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group):
        """Add a group (a dict with "params" and optional hyperparameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a parameter group needs a 'params' entry")
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}")
        group_params = param_group["params"]
        if (isinstance(group_params, (np.ndarray, FlatParams, FlatSegment))
                or _cuda.is_cuda_array(group_params)):
            group_params = [group_params]
        group_params = list(group_params)
        if not group_params:
            raise ValueError("a parameter group has an empty 'params' list")
        flat_grads = [p.grad_data if isinstance(p, (FlatParams, FlatSegment)) else None
                      for p in group_params]
        group_params = [p.data if isinstance(p, (FlatParams, FlatSegment)) else p
                        for p in group_params]
        existing = self._all_params()
        first = len(existing)
        views = [C.check_param(f"params[{first + k}]", p) for k, p in enumerate(group_params)]
        on_gpu = self._on_gpu
        for k, v in enumerate(views):
            here = not isinstance(v, np.ndarray)
            if on_gpu is None:
                on_gpu = here
            elif here != on_gpu:
                kinds = ("a GPU array", "a numpy.ndarray") if here else ("a numpy.ndarray", "a GPU array")
                raise TypeError(f"params[{first + k}] is {kinds[0]}, but params[0] is {kinds[1]}; "
                                "an optimizer's parameters must all be on the host or all on the GPU")
            C.check_target_matches(self.target, v, f"params[{first + k}]")
        seen = {id(p) for p in existing}
        for k, p in enumerate(group_params):
            if id(p) in seen:
                raise ValueError(f"params[{first + k}] is listed more than once "
                                 "(some parameters appear in more than one group, or twice in one)")
            seen.add(id(p))
        C.check_no_overlap([(f"params[{i}]", p)
                            for i, p in enumerate(self._views(existing, on_gpu) + views)])
        group = {**self.defaults, **param_group, "params": group_params}
        group.update(self._check_group(group))
        self.param_groups.append(group)
        self._flat_grads.extend(flat_grads)
        self._on_gpu = on_gpu
        self._group_added(group, first, views)

    def _views(self, params, on_gpu=None):
        """``params`` as the kernels take them: GPU arrays as numba device arrays
        (converted at each use, so a tensor's current memory is what is updated)."""
        if not (self._on_gpu if on_gpu is None else on_gpu):
            return params
        return [C.check_param(f"params[{i}]", p) for i, p in enumerate(params)]

    def _group_added(self, group, first, views):
        """Hook run after a group is added (Adagrad initialises its state here);
        ``views`` are the group's parameters as ``_views`` gives them."""

    # --- stepping ------------------------------------------------------------

    def step(self, grads=None, *, check_finite=False, grad_scale=None):
        """Update every parameter in place from ``grads`` (one per parameter, or None).

        Without ``grads``, every parameter must come from a FlatParams, and
        its gradient is read from the FlatParams' gradient buffer.

        ``grad_scale``: every gradient is divided by it first, fused into the
        step (mixed-precision loss scaling). ``check_finite=True`` first scans
        every (unscaled) gradient; if any element is NaN or infinite, the
        whole step is skipped — parameters, state and step counts untouched —
        and ``step`` returns False; otherwise it returns True. Without it,
        ``step`` returns None and non-finite values propagate, as in torch.
        """
        check_finite = C.check_flag("check_finite", check_finite)
        inv_scale = C.check_grad_scale(grad_scale)
        params = self._views(self._all_params())
        if grads is None:
            if any(g is None for g in self._flat_grads):
                raise TypeError("step() without grads needs every parameter to come from a "
                                "FlatParams; pass one gradient per parameter")
            return self._apply(params, self._flat_grads, inv_scale, check_finite)
        if (isinstance(grads, np.ndarray) or not hasattr(grads, "__len__")
                or (self._on_gpu and _cuda.is_cuda_array(grads))):
            raise TypeError("grads must be a sequence with one gradient array (or None) per parameter")
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries, but the optimizer has "
                             f"{len(params)} parameters")
        checked = [None if g is None else C.check_grad(f"grads[{i}]", g, p, f"params[{i}]")
                   for i, (g, p) in enumerate(zip(grads, params))]
        for i, (g, p) in enumerate(zip(checked, params)):
            if g is None:
                continue
            if isinstance(g, np.ndarray):
                if np.may_share_memory(g, p):
                    raise ValueError(f"grads[{i}] shares memory with params[{i}]")
            else:
                C.check_no_overlap([(f"grads[{i}]", g), (f"params[{i}]", p)])
        return self._apply(params, checked, inv_scale, check_finite)

    def _checked_hypers(self):
        """Every group's checked hyperparameters. A group whose values are the
        ones checked at the last step is not checked again."""
        cache = self._hyper_cache
        hypers = []
        for k, group in enumerate(self.param_groups):
            key = tuple(tuple(v) if isinstance(v, list) else v
                        for name, v in group.items() if name != "params")
            cached = cache.get(k)
            if cached is None or cached[0] != key:
                cached = cache[k] = (key, self._check_group(group))
            hypers.append(cached[1])
        return hypers

    def _apply(self, params, grads, inv_scale, check_finite):
        """Check the hyperparameters (and the gradients' values, with
        ``check_finite``), then step every parameter with a gradient."""
        hypers = self._checked_hypers()
        if check_finite and U.any_nonfinite([g for g in grads if g is not None], inv_scale,
                                            self.target):
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

    def state_dict(self, to_host=False):
        """The optimizer's state in ``torch.optim``'s layout.

        ``{"state": {index: {...}}, "param_groups": [{...hyperparameters...,
        "params": [indices]}]}``. Like torch's, the arrays in it are the live
        state (not copies): pickle it, or ``copy.deepcopy`` it, to keep a
        snapshot while training goes on.

        ``to_host=True`` gives NumPy copies of the state arrays instead (of
        GPU state: copied once the GPU has finished its work), to save or
        inspect; ``load_state_dict`` takes either kind.
        """
        groups, index = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(index, index + n))})
            index += n
        if to_host:
            state = {i: {k: _host_copy(v) for k, v in s.items()} for i, s in self.state.items()}
        else:
            state = {i: dict(s) for i, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state dict from :meth:`state_dict` (or torch's, for the same optimizer).

        Arrays (NumPy or GPU) are copied in, cast to each parameter's dtype,
        to where the parameters live. The dict is checked whole before
        anything changes: a bad one raises and leaves the optimizer as it was.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, "
                             f"the optimizer has {len(self.param_groups)}")
        index_of = {}  # saved parameter id -> our parameter index
        new_groups, first = [], 0
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"state_dict['param_groups'][{k}] must be a dict with 'params'")
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(f"state_dict['param_groups'][{k}] has {len(ids)} parameters, "
                                 f"the optimizer's group {k} has {len(group['params'])}")
            for j, pid in enumerate(ids):
                index_of[pid] = first + j
            first += len(ids)
            new_group = {**group, **{key: saved[key] for key in self.defaults if key in saved}}
            try:
                new_group.update(self._check_group(new_group))
            except (TypeError, ValueError) as e:
                raise type(e)(f"state_dict['param_groups'][{k}]: {e}") from None
            new_groups.append(new_group)
        if len(index_of) != first:
            raise ValueError("state_dict['param_groups'] lists a parameter id more than once")
        params = self._views(self._all_params())
        group_of = [k for k, group in enumerate(self.param_groups) for _ in group["params"]]
        hypers = [self._check_group(group) for group in new_groups]
        new_state = {}
        for pid, saved in saved_state.items():
            if pid not in index_of:
                raise ValueError(f"state_dict['state'] has an entry {pid!r} that no group lists")
            i = index_of[pid]
            new_state[i] = self._load_param_state(f"state_dict['state'][{pid!r}]", saved,
                                                  params[i], hypers[group_of[i]])
        # Everything is checked: commit.
        for group, new_group in zip(self.param_groups, new_groups):
            group.update(new_group)
        self.state = new_state

    def _load_param_state(self, name, saved, p, hyper):
        if not isinstance(saved, dict):
            raise TypeError(f"{name} must be a dict, got {type(saved).__name__}")
        allowed = set(self._state_keys) | ({"step"} if self._has_step else set())
        unknown = set(saved) - allowed
        if unknown:
            raise ValueError(f"{name} has unknown key(s) {sorted(map(str, unknown))}; "
                             f"expected {sorted(allowed)}")
        state = {}
        if self._has_step:
            if "step" not in saved:
                raise ValueError(f"{name} has no 'step'")
            state["step"] = _load_step(f"{name}['step']", saved["step"])
        for key in self._state_keys:
            if key not in saved or saved[key] is None:
                continue
            value = saved[key]
            if _cuda.is_cuda_array(value):
                value = host_array(value)
            elif not hasattr(value, "__array__"):
                raise TypeError(f"{name}['{key}'] must be an array, got {type(value).__name__}")
            value = np.asarray(value)
            if value.dtype.kind != "f":
                raise TypeError(f"{name}['{key}'] must be a floating-point array, got dtype {value.dtype}")
            # Another float dtype is cast to the parameter's, as torch does.
            a = np.array(value, dtype=p.dtype, copy=True, order="C")
            if a.shape != p.shape:
                raise ValueError(f"{name}['{key}'] has shape {a.shape}, its parameter has shape {p.shape}")
            state[key] = place_like(p, a)
        missing = set(self._required_state(state, hyper)) - set(state)
        if missing:
            raise ValueError(f"{name} lacks {sorted(missing)}")
        return state

    def _required_state(self, state, hyper):
        """The state keys a loaded parameter state must have."""
        return self._state_keys

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines + [")"])


def _host_copy(value):
    """A state entry for ``state_dict(to_host=True)``: arrays as NumPy copies."""
    if isinstance(value, np.ndarray) or _cuda.is_cuda_array(value):
        return np.array(host_array(value), copy=True)
    return value


def _load_step(name, value):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got bool")
    try:
        step = float(np.asarray(value))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not step >= 0 or step != int(step):
        raise ValueError(f"{name} must be a whole number >= 0, got {step}")
    return int(step)


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

    _state_keys = ("momentum_buffer",)
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, target=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), target=target)

    def _check_group(self, g):
        h = dict(lr=C.check_real("lr", g["lr"], low=0.0),
                 momentum=C.check_real("momentum", g["momentum"], low=0.0),
                 dampening=C.check_real("dampening", g["dampening"]),
                 weight_decay=C.check_real("weight_decay", g["weight_decay"], low=0.0),
                 nesterov=C.check_flag("nesterov", g["nesterov"]),
                 maximize=C.check_flag("maximize", g["maximize"]))
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening == 0")
        return h

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

    _state_keys = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False, target=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), target=target)

    def _check_group(self, g):
        return dict(lr=C.check_real("lr", g["lr"], low=0.0),
                    lr_decay=C.check_real("lr_decay", g["lr_decay"], low=0.0),
                    weight_decay=C.check_real("weight_decay", g["weight_decay"], low=0.0),
                    initial_accumulator_value=C.check_real(
                        "initial_accumulator_value", g["initial_accumulator_value"], low=0.0),
                    eps=C.check_real("eps", g["eps"], low=0.0),
                    maximize=C.check_flag("maximize", g["maximize"]))

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

    _state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, target=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         target=target)

    def _check_group(self, g):
        return dict(lr=C.check_real("lr", g["lr"], low=0.0),
                    betas=C.check_betas(g["betas"]),
                    eps=C.check_real("eps", g["eps"], low=0.0),
                    weight_decay=C.check_real("weight_decay", g["weight_decay"], low=0.0),
                    amsgrad=C.check_flag("amsgrad", g["amsgrad"]),
                    maximize=C.check_flag("maximize", g["maximize"]),
                    decoupled_weight_decay=C.check_flag("decoupled_weight_decay",
                                                        g["decoupled_weight_decay"]))

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
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, default 1e-2.

    Each step first scales the parameter by ``1 - lr * weight_decay``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, target=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         target=target)
