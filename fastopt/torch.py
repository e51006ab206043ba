"""fastopt's kernels in PyTorch training loops: ``torch.optim`` optimizers and flat models.

``SGD``, ``Adagrad``, ``Adam`` and ``AdamW`` here are ``torch.optim.Optimizer``
subclasses, built like torch's (the same arguments and defaults, parameter
groups, ``add_param_group``, ``zero_grad``, ``state_dict`` in torch's layout,
every ``torch.optim.lr_scheduler``), whose ``step(closure=None)`` reads each
parameter's ``.grad`` and updates it with fastopt's fused kernels: CPU
tensors through zero-copy NumPy views, CUDA tensors through
``__cuda_array_interface__``. Their state is torch tensors, so ``torch.save``
works and a state dict moves between ``fastopt.torch.AdamW`` and
``torch.optim.AdamW`` both ways. ``step(max_grad_norm=...)`` clips the
gradients by their global norm inside the update, as
``torch.nn.utils.clip_grad_norm_`` then ``step`` would, and keeps the norm in
``last_grad_norm``.

``flatten_(model)`` moves a model's parameters and gradients into one buffer
per dtype and device, so that a step is one kernel call per run of
consecutive parameters in a group instead of one per tensor.

This module needs PyTorch (``pip install torch``, or fastopt's ``torch``
extra); ``import fastopt`` does not import it.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import threading
import warnings
import weakref
from typing import Any, Callable

import numpy as np

try:
    import torch
except ImportError:
    raise ImportError('fastopt.torch needs PyTorch, which is not installed: pip install torch '
                      '(or pip install "fastopt[torch]")') from None

from . import _checks as C
from . import _cuda
from . import _spec, _state_io
from . import _update as U
from . import optimizers as _numpy_optimizers

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "flatten_", "FlatModel"]

_DTYPES = (torch.float32, torch.float64)

_NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _view(name: str, t: torch.Tensor) -> Any:
    """A CPU tensor as a NumPy array, a CUDA tensor as a numba device array:
    the same memory, no copy."""
    t = t.detach()
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} is {t.dtype}; fastopt.torch steps float32 and float64 tensors")
    if t.is_neg() or t.is_conj():  # lazily negated: its memory holds the other sign (the
        # CUDA array interface does not say so)
        raise ValueError(f"{name} is a lazily negated view (torch's neg bit): pass "
                         f"{name.split('.')[-1]}.resolve_neg(), or a tensor of its own")
    if t.device.type == "cuda":
        return _cuda.as_array(name, t)
    if t.device.type != "cpu":
        raise TypeError(f"{name} is on {t.device}; fastopt.torch steps CPU and CUDA tensors")
    return t.numpy()


def _tensor(a: Any) -> torch.Tensor:
    """A NumPy or numba device array as a torch tensor over the same memory."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.as_tensor(a, device="cuda")


# --- flat models ------------------------------------------------------------------

class _Buffer:
    """One flat buffer: its parameters (in order), their offsets, and the
    data and gradient tensors they are views of; with ``state[key]`` the
    optimizers' flat state tensors (created on a first step) and ``steps``
    (float32, one per parameter) whose elements are the parameters' steps."""

    def __init__(self, params: list, dtype: torch.dtype, device: torch.device):
        # The parameters, held weakly: the module-wide table of flattened
        # parameters holds their buffers, and a buffer holding its parameters
        # would keep every flattened model alive.
        self._refs = [weakref.ref(p) for p in params]
        self.shapes = [p.shape for p in params]
        self.count = len(params)
        sizes = [p.numel() for p in params]
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        total = self.offsets[-1]
        self.data = torch.empty(total, dtype=dtype, device=device)
        self.grad = torch.zeros(total, dtype=dtype, device=device)
        for k, p in enumerate(params):
            a, b = self.offsets[k], self.offsets[k + 1]
            with torch.no_grad():
                self.data[a:b].copy_(p.detach().reshape(-1))
                if p.grad is not None:
                    self.grad[a:b].copy_(p.grad.detach().reshape(-1))
            p.data = self.data[a:b].view(p.shape)
            if p.requires_grad:  # a frozen parameter keeps no gradient: optimizers skip it
                p.grad = self.grad[a:b].view(p.shape)
        # Where each parameter's views start, as torch reports it (0 for an
        # empty one, wherever it lies).
        self.data_ptrs = [self.data[a:b].data_ptr() for a, b in zip(self.offsets, self.offsets[1:])]
        self.grad_ptrs = [self.grad_view(k).data_ptr() for k in range(self.count)]
        self.owners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> state

    def param(self, k: int) -> torch.Tensor:
        """Parameter ``k``, which an optimizer stepping it keeps alive."""
        p = self._refs[k]()
        if p is None:
            raise RuntimeError("a flattened parameter is gone")  # (an optimizer holds its own)
        return p

    @property
    def params(self) -> list:
        """The parameters, None for those gone."""
        return [r() for r in self._refs]

    def grad_view(self, k: int) -> torch.Tensor:
        return self.grad[self.offsets[k]:self.offsets[k + 1]].view(self.shapes[k])


class FlatModel:
    """What :func:`flatten_` returns: the flat buffers of a set of parameters.

    ``buffers`` maps ``(dtype, device)`` to ``(data, grad)``, the 1-D tensors
    the parameters' ``.data`` and ``.grad`` are views of. ``zero_grad()``
    zeroes every gradient buffer (one fill per buffer), re-attaching any
    gradient that was set to None or replaced, and setting to None those of
    parameters frozen since (``requires_grad`` False).
    """

    def __init__(self, buffers: list[_Buffer]):
        self._buffers = buffers

    @property
    def buffers(self) -> dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]]:
        return {(b.data.dtype, b.data.device): (b.data, b.grad) for b in self._buffers}

    def zero_grad(self) -> None:
        for b in self._buffers:
            _check_in_place(b)
            b.grad.zero_()
            for k, p in enumerate(b.params):
                if p is None:
                    continue
                g = p.grad
                if not p.requires_grad:  # frozen since: no gradient, so not stepped
                    p.grad = None
                elif g is None or g.data_ptr() != b.grad_ptrs[k]:
                    p.grad = b.grad_view(k)


# id(parameter) -> (weak reference to it, its buffer, its index there): one buffer
# per parameter at most (a tensor's == is elementwise, so no WeakKeyDictionary)
_FLAT: dict[int, tuple] = {}
_flat_lock = threading.Lock()


def _new_flat_lock_in_child() -> None:
    # a thread of the parent may have held it (in flatten_): it would never be released here
    global _flat_lock
    _flat_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_flat_lock_in_child)


def _flat_entry(p: torch.Tensor) -> tuple | None:
    """``(buffer, index)`` of a flattened parameter, else None."""
    entry = _FLAT.get(id(p))
    if entry is None or entry[0]() is not p:
        return None
    return entry[1], entry[2]


def flatten_(module_or_parameters: Any) -> FlatModel:
    """Move parameters (and their gradients) into one contiguous buffer per dtype and device.

    Parameters
    ----------
    module_or_parameters : torch.nn.Module or iterable of tensors
        A module's ``parameters()`` are taken; a parameter listed twice (tied
        weights) is moved once.

    Returns
    -------
    FlatModel
        The buffers. Each parameter's ``.data`` becomes a view of its
        buffer, and its ``.grad`` a view of the matching gradient buffer
        (zeros, or the gradient it had): backward passes accumulate into it
        in place, so a fastopt optimizer steps each run of consecutive
        parameters of a group with one kernel call.

    What keeps working: ``optimizer.zero_grad()`` of a fastopt optimizer
    zeroes its flattened gradients in place; gradient accumulation;
    ``model.load_state_dict`` (it copies in place); ``clip_grad_norm_``.
    ``model.zero_grad()`` sets the gradients to None: the next backward
    creates new gradient tensors, which the next fastopt step copies into
    the buffer (an extra pass over them; it warns once) and re-attaches, and
    a parameter left without a gradient is skipped, as torch skips it.
    What differs from torch: ``zero_grad()`` keeps every flattened
    gradient (zeros), so a parameter that a backward pass does not reach
    (unused in the forward) is stepped with a zero gradient, as torch does
    after ``zero_grad(set_to_none=False)``: its step count advances and
    weight decay and momentum apply. Freeze it (``requires_grad_(False)``:
    ``zero_grad()`` then sets its gradient to None) or set its ``.grad`` to
    None to skip it.
    What raises: a parameter whose data moved (``model.to(...)`` to another
    dtype or device, ``p.data = ...``): the step raises a RuntimeError
    instead of stepping a stale buffer; call ``flatten_`` again (and make a
    new optimizer, as torch's optimizers need after a dtype change).
    Parameters that need a gradient of another layout (sparse) or dtype
    (not float32 or float64) are refused, and so are distinct parameters
    over the same memory (flattening would untie them).
    A fastopt optimizer keeps the state of flattened parameters in flat
    tensors too, each parameter's entries being views of them: a state
    tensor assigned by hand (``opt.state[p]["exp_avg"] = t``) is copied in at
    the next step and the entry becomes a view again, so later changes to
    ``t`` itself are not seen. ``share_memory_()`` on the state is followed.
    """
    if isinstance(module_or_parameters, torch.nn.Module):
        params = list(module_or_parameters.parameters())
    elif isinstance(module_or_parameters, torch.Tensor):
        params = [module_or_parameters]  # type: ignore[list-item]
    else:
        try:
            params = list(module_or_parameters)
        except TypeError:
            raise TypeError("flatten_ takes a torch.nn.Module or an iterable of tensors, got "
                            f"{type(module_or_parameters).__name__}") from None
    unique: list = []
    seen: set = set()
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters[{i}] is {type(p).__name__}, not a torch.Tensor")
        if p.dtype not in _DTYPES:
            raise TypeError(f"parameters[{i}] is {p.dtype}; flatten_ takes float32 and float64")
        if p.is_sparse or (p.grad is not None and p.grad.is_sparse):
            raise TypeError(f"parameters[{i}] is sparse or has a sparse gradient")
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    if not unique:
        raise ValueError("flatten_ got no parameters")
    spans = sorted((p.untyped_storage().data_ptr(), p.data_ptr(),
                    p.data_ptr() + p.numel() * p.element_size(), i)
                   for i, p in enumerate(unique) if p.numel())
    for (s1, _, end, i), (s2, start, _, j) in zip(spans, spans[1:]):
        if s1 == s2 and start < end:  # distinct parameters over the same memory
            raise ValueError(f"parameters {min(i, j)} and {max(i, j)} share memory (tied "
                             "through one storage, not one Parameter): flatten_ would untie "
                             "them; tie them as one Parameter instead")
    groups: dict = {}
    for p in unique:
        groups.setdefault((p.dtype, p.device), []).append(p)
    with _flat_lock:
        buffers = [_Buffer(ps, dtype, device) for (dtype, device), ps in groups.items()]
        for b in buffers:
            for k, p in enumerate(b.params):
                _FLAT[id(p)] = (weakref.ref(p, _forget(id(p))), b, k)
    return FlatModel(buffers)


def _forget(key: int, table: dict = _FLAT) -> Callable[[Any], Any]:
    """The callback that drops a dead parameter's entry (if still its own)."""
    def forget(ref: Any) -> None:
        entry = table.get(key)
        if entry is not None and entry[0] is ref:
            del table[key]
    return forget


def _check_in_place(b: _Buffer) -> None:
    for k, p in enumerate(b.params):
        if p is not None and p.data_ptr() != b.data_ptrs[k]:
            raise RuntimeError(
                f"a flattened parameter (shape {tuple(p.shape)}, {p.dtype}, {p.device}) no longer "
                "lies in its flat buffer: its data was replaced (model.to(...) to another dtype or "
                "device, or p.data = ...). Call fastopt.torch.flatten_ again, and make a new "
                "optimizer if the dtype or device changed")


# --- optimizer state that says when it changed ---------------------------------------

class _Changes:
    """A count of the changes made to an optimizer's state dicts (a key set
    or removed, a parameter's state replaced or dropped): a step plan made
    at another count may hold stale views, and is made again."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def _counting(method: Callable) -> Callable:
    @functools.wraps(method)
    def changing(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.changes.n += 1
        return method(self, *args, **kwargs)
    return changing


_MUTATORS = ("__setitem__", "__delitem__", "__ior__", "clear", "pop", "popitem", "setdefault",
             "update")


class _ParamState(dict):
    """A parameter's state dict, counting its changes in ``changes``.
    Pickled and copied as a plain dict."""

    __slots__ = ("changes",)

    def __init__(self, changes: _Changes, *args: Any):
        super().__init__(*args)
        self.changes = changes

    def __reduce__(self) -> Any:
        return dict, (dict(self),)

    locals().update({name: _counting(getattr(dict, name)) for name in _MUTATORS})


class _State(collections.defaultdict):
    """``optimizer.state`` (parameter -> its state dict), counting its changes
    and its parameters' in ``changes``. A plain dict stored in it is kept as
    a ``_ParamState`` of the same items. Pickled as torch's: a
    ``defaultdict(dict)`` of plain dicts."""

    def __init__(self, changes: _Changes, items: Any = ()):
        super().__init__(functools.partial(_ParamState, changes))
        self.changes = changes
        for key, value in items:
            self[key] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        if (isinstance(value, dict) and not isinstance(value, _ParamState)) or (
                isinstance(value, _ParamState) and value.changes is not self.changes):
            value = _ParamState(self.changes, value)
        self.changes.n += 1
        super().__setitem__(key, value)

    # Every way in goes through __setitem__ (so a dict put in is counted when edited).
    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]  # (defaultdict's is narrower)
        self.update(other)
        return self

    def __reduce__(self) -> Any:
        return (collections.defaultdict, (dict,), None, None,
                ((k, dict(v)) for k, v in self.items()))

    locals().update({name: _counting(getattr(collections.defaultdict, name))
                     for name in _MUTATORS
                     if name not in ("__setitem__", "update", "setdefault", "__ior__")})


# --- optimizers ---------------------------------------------------------------------

def _torch_only(torch_cls: type, spec: _spec.Spec) -> dict[str, Any]:
    """torch's constructor arguments that choose its implementation (foreach,
    fused, ...), not the update: kept in the groups so state dicts have
    torch's layout, with torch's defaults."""
    params = inspect.signature(torch_cls).parameters
    return {name: p.default for name, p in params.items()
            if name != "params" and name not in spec.defaults}


# torch-only flags fastopt cannot honour when set
_REFUSED = ("capturable", "differentiable")

_warned_copy = False


# Hyperparameters of the specs that torch's optimizers do not have and this
# front-end does not take: reduced-precision state is the NumPy classes' only.
_NOT_HERE = ("state_dtype", *_spec.BFLOAT16_PARAMS)


def _hyper_parameters(spec: _spec.Spec) -> list[inspect.Parameter]:
    return [p for p in spec.parameters() if p.name not in _NOT_HERE]


class _Optimizer(torch.optim.Optimizer):
    """The common part: the constructor, the checks and the step."""

    spec: _spec.Spec
    _numpy_cls: Any  # the NumPy class whose state and update hooks are used
    _torch_cls: type
    _extra: dict[str, Any]
    target = None  # read by the NumPy classes' update hooks
    last_grad_norm: float | None = None
    last_step_taken: bool | None = None  # with check_finite: whether the last step was taken
    # The NumPy classes' state helpers, which their hooks call on ``self``.
    _KERNEL_ARG: dict[str, str] = {}
    _fresh = _numpy_optimizers._Stored._fresh
    _made: list | None = None  # (during a plan: see ``_plan``)
    _seen: list | None = None
    _swept: tuple = ()  # (the state's change count, the entries stepped) at the last sweep
    _stored = _numpy_optimizers._Stored._stored

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls._KERNEL_ARG = cls._numpy_cls._KERNEL_ARG
            cls._extra = _torch_only(cls._torch_cls, cls.spec)
            params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            setattr(cls, "__signature__",
                    inspect.Signature([params, *cls._arguments().parameters.values()]))

    @classmethod
    def _arguments(cls) -> inspect.Signature:
        """The constructor's arguments after ``params``: the hyperparameters
        and torch's own options, positional where torch's are (Adagrad's
        ``foreach``), in torch's order."""
        torch_params = inspect.signature(cls._torch_cls).parameters
        extra = [inspect.Parameter(k, torch_params[k].kind, default=v)
                 for k, v in cls._extra.items()]
        every = [*_hyper_parameters(cls.spec), *extra]
        positional = [p for p in every if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
        positional.sort(key=lambda p: list(torch_params).index(p.name))
        return inspect.Signature(positional + [p for p in every if p not in positional])

    def __init__(self, params: Any, *args: Any, **kwargs: Any):
        sig = self._arguments()
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}(): {e}") from None
        bound.apply_defaults()
        defaults = {**{k: v for k, v in self.spec.defaults.items() if k not in _NOT_HERE},
                    **bound.arguments}
        self._check_group(defaults, "defaults")
        self._hyper_cache: dict = {}
        self._plan_cache: dict = {}
        self._apart: dict = {}  # id(parameter) -> what its own overlap check saw (``_single``)
        self._changes = _Changes()
        super().__init__(params, defaults)
        self._track_state()

    def _check_group(self, group: dict, where: str) -> dict:
        for name in _REFUSED:
            if group.get(name):
                raise ValueError(f"{where}: {name}=True is not supported by fastopt.torch")
        if group.get("state_dtype") is not None:
            raise ValueError(f"{where}: state_dtype is not supported by fastopt.torch yet "
                             "(its state is torch tensors); use the NumPy classes")
        # torch's own state dicts have none of the NumPy classes' own options
        # (state_dtype: the parameters' dtype; no bfloat16 parameters here).
        absent = {k: v for k, v in self.spec.defaults.items() if k in _NOT_HERE}
        try:
            hyper = self.spec.check({**absent, **group})
            params = group.get("params")
            if isinstance(params, (list, tuple)) and any(
                    getattr(p, "dtype", None) == torch.float32 for p in params):
                # (torch refuses these too, as it casts them to float)
                U.check_range(self._numpy_cls._RULE, hyper, np.float32, "float32 parameters")
            return hyper
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, as torch's does; its hyperparameters are checked first,
        and a parameter listed twice is refused (torch warns, and will raise:
        it steps such a parameter twice a step)."""
        if isinstance(param_group, dict):
            self._check_group({**self.defaults, **param_group}, "the new parameter group")
            params = param_group.get("params")
            if not isinstance(params, (torch.Tensor, set)) and params is not None:
                params = list(params)
                if len({id(p) for p in params}) != len(params):
                    raise ValueError("the new parameter group lists a parameter twice; "
                                     "list each once")
                param_group = {**param_group, "params": params}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        had = [p for p in group["params"] if p in self.state]
        try:
            self._group_added(group)
        except Exception:  # nothing kept: the group, and the state made for it
            self.param_groups.pop()
            for p in group["params"]:
                if not any(p is q for q in had):
                    self.state.pop(p, None)
            raise

    def _group_added(self, group: dict) -> None:
        """Adagrad creates its state with the group, as torch's does."""

    def _new_state(self, p: torch.Tensor, hyper: dict) -> dict[str, Any]:
        """A parameter's state before its first step, as torch tensors."""
        state = self._numpy_cls._new_state(self, _view("a parameter", p), hyper)
        return {k: torch.tensor(float(v)) if k == "step" else _tensor(v) for k, v in state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; the gradients of flattened parameters (``flatten_``) are
        zeroed in place instead of set to None, so they stay in their buffer."""
        flat = []
        for group in self.param_groups:
            for p in group["params"]:
                if _flat_entry(p) is not None:
                    flat.append(p)
        if not flat:
            return super().zero_grad(set_to_none)
        flat_ids = {id(p) for p in flat}
        buffers: dict = {}
        for p in flat:
            b, k = _flat_entry(p)  # type: ignore[misc]
            buffers.setdefault(id(b), (b, []))[1].append(k)
        for b, ks in buffers.values():
            _check_in_place(b)
            if len(ks) == b.count:
                b.grad.zero_()
            for k in ks:
                p = b.param(k)
                g = p.grad
                if not p.requires_grad:  # frozen since flatten_: as torch treats it
                    if g is not None and set_to_none:
                        p.grad = None
                    elif g is not None and len(ks) != b.count:
                        g.zero_()
                    continue
                if g is None or g.data_ptr() != b.grad_ptrs[k]:
                    p.grad = b.grad_view(k)
                if len(ks) != b.count:
                    p.grad.zero_()
        for group in self.param_groups:  # the others as torch does it
            for p in group["params"]:
                if id(p) not in flat_ids and p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        if p.grad.grad_fn is not None:
                            p.grad.detach_()
                        else:
                            p.grad.requires_grad_(False)
                        p.grad.zero_()

    def _hypers(self) -> list[dict]:
        cache = self._hyper_cache
        hypers = []
        for k, group in enumerate(self.param_groups):
            key = _spec.cache_key(group)
            hit = cache.get(k)
            if key is None or hit is None or hit[0] != key:
                hit = cache[k] = (key, self._check_group(group, f"param_groups[{k}]"))
            hypers.append(hit[1])
        return hypers

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *,
             max_grad_norm: float | None = None, norm_type: float = 2.0,
             check_finite: bool = False, grad_scale: float | None = None) -> Any:
        """One step of every parameter with a ``.grad``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients
            enabled), as in torch.
        max_grad_norm : float, optional
            Clip the gradients by their global norm first, as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm, norm_type)``
            would, but inside the update: the gradients are read once more
            (for the norm) and not written. The norm, before clipping, is
            kept in ``last_grad_norm``.
        norm_type : float
            2 or ``math.inf``.
        check_finite : bool
            First scan every (unscaled) gradient; if any element is NaN or
            infinite, skip the whole step (parameters, state and step counts
            untouched). With ``max_grad_norm``, the norm's pass is the scan.
            ``last_step_taken`` says whether the step was taken.
        grad_scale : float, optional
            Divide every gradient by it first, inside the update (loss
            scaling for mixed precision); the norm is that of the unscaled
            gradients.

        Returns
        -------
        The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = C.check_clip(max_grad_norm, norm_type)
        check_finite = C.check_flag("check_finite", check_finite)
        inv_scale = C.check_grad_scale(grad_scale, (
            _NUMPY_DTYPE[p.dtype] for group in self.param_groups for p in group["params"]
            if p.grad is not None and p.dtype in _NUMPY_DTYPE))
        hypers = self._hypers()
        # Parameters without state yet: a step skipped by check_finite leaves
        # them without (the plan makes their state).
        fresh = ([p for group in self.param_groups for p in group["params"]
                  if not self.state.get(p)] if check_finite else [])
        work = self._plan(hypers)  # everything checked; from here on nothing raises
        grads = [g for _, g, _, _, _, _ in work]
        target = "cuda" if grads and not isinstance(grads[0], np.ndarray) else None
        if clip is not None:
            inv_scale, self.last_grad_norm, finite = U.clip_scale(grads, inv_scale, clip[0],
                                                                  clip[1], target)
        else:
            finite = not (check_finite and U.any_nonfinite(grads, inv_scale, target))
        if check_finite:
            self.last_step_taken = finite
            if not finite:
                for p in fresh:
                    self.state.pop(p, None)
                return loss
        for p, g, shadow, hyper, commit, _ in work:
            self._numpy_cls._update(self, p, g, inv_scale, shadow, hyper)
            commit(shadow)
        return loss

    # --- the plan of a step: which kernel calls, over which views ------------------

    def _plan(self, hypers: list[dict]) -> list:
        """``[(param view, grad view, state as the NumPy classes take it, hyper,
        commit)]``, one per kernel call: a run of consecutive flattened
        parameters is one entry. ``commit(shadow)`` writes the step count
        (and any state created) back into the torch state.

        A group's plan is kept while its parameters, the state's version,
        every flattened parameter's data and gradient pointers and its flat
        state tensors' data pointers are the same (checked at every step: two
        pointer compares per parameter, one per flat state tensor)."""
        self._track_state()
        made: list = []  # parameters given a fresh state by this plan
        self._made = made
        self._seen = []  # each parameter stepped alone: its memory, as ``_single`` saw it
        try:
            return self._planned(hypers)
        except BaseException:  # nothing changed: their state made is taken back
            for p in made:
                self.state.pop(p, None)
            raise
        finally:
            self._made = self._seen = None

    def _planned(self, hypers: list[dict]) -> list:
        work: list = []
        kinds = set()
        cache = self._plan_cache
        changes = self._changes
        for k, (group, hyper) in enumerate(zip(self.param_groups, hypers)):
            params = group["params"]
            ids = tuple(map(id, params))
            hit = cache.get(k)
            if (hit is None or hit[0] != ids or hit[1] != changes.n
                    or not _still_in_place(hit[3])
                    or any(t.data_ptr() != ptr for t, ptr in hit[4])):
                items, checks = self._group_plan(k, params, hyper)
                # and where the flat state lives: share_memory_() on a state
                # tensor moves its storage, which the runs' views must follow
                state_ptrs = [(t, t.data_ptr()) for item in items if isinstance(item, _Run)
                              for t in item.store["flat"].values()]
                hit = cache[k] = (ids, changes.n, items, checks, state_ptrs)
            for item in hit[2]:
                if isinstance(item, _Run):
                    work.extend(item.entries(self, hyper))
                    kinds.add(item.buffer.data.device.type)
                else:
                    name, p = item
                    if p.grad is not None:  # read at each step: a plan holds every parameter
                        work.append(self._single(name, p, hyper))
                        kinds.add(p.device.type)
        if len(kinds) > 1:
            raise TypeError("fastopt.torch steps the parameters of one optimizer all on the CPU "
                            "or all on CUDA")
        swept = (changes.n, tuple(name for *_, name in work), tuple(self._seen or ()))
        if self._swept != swept:
            # The state changed since the last sweep (a state tensor set by
            # hand, a load), or other parameters are stepped: no array one
            # step writes may be another's, or it would be written twice (one
            # parameter's state set to another's).
            C.check_no_overlap([(name, p) for p, _, _, _, _, name in work]
                               + [(f"state {key!r} of {name}", v)
                                  for _, _, shadow, _, _, name in work
                                  for key, v in shadow.items() if key != "step"])
            self._swept = swept
        return work

    def _group_plan(self, k: int, params: list, hyper: dict) -> tuple[list, list]:
        """A group's plan: its runs of flattened parameters and its single
        parameters; and the pointer checks that keep it valid (each flattened
        parameter's data pointer and gradient pointer, None for no gradient)."""
        items: list = []
        checks: list = []
        run: list = []
        for j, p in enumerate(params):
            entry = _flat_entry(p)
            if entry is not None:
                b, idx = entry
                _check_one_in_place(b, idx)
                g = p.grad
                if g is None:  # skipped, as torch skips it
                    self._flush(run, hyper, items)
                    checks.append((p, b.data_ptrs[idx], None))
                    continue
                if g.data_ptr() != b.grad_ptrs[idx]:
                    _adopt_grad(b, idx, g)
                if run and (run[-1][0] is not b or run[-1][1] != idx - 1):
                    self._flush(run, hyper, items)
                run.append((b, idx))
                checks.append((p, b.data_ptrs[idx], b.grad_ptrs[idx]))
                continue
            self._flush(run, hyper, items)
            items.append((f"param_groups[{k}]['params'][{j}]", p))
        self._flush(run, hyper, items)
        return items, checks

    def _single(self, name: str, p: torch.Tensor, hyper: dict) -> tuple:
        """The plan entry of a parameter stepped alone."""
        grad = p.grad
        assert grad is not None
        if grad.is_sparse:
            raise TypeError(f"{name} has a sparse gradient; fastopt.torch steps dense ones")
        if not p.is_contiguous():
            raise ValueError(f"{name} is not contiguous (a channels_last weight, or a view): "
                             "fastopt.torch steps contiguous tensors; keep the model in "
                             ".to(memory_format=torch.contiguous_format)")
        pv = C.check_param(name, _view(name, p))
        if grad.is_neg():  # (only read: resolved, a copy, as torch's own step reads it)
            grad = grad.resolve_neg()
        gv = C.check_grad(f"{name}.grad", _view(f"{name}.grad", grad), pv, name)
        state = self._state_of(p, hyper)
        shadow: dict = {}
        for key, value in state.items():
            if key == "step":  # set by hand, or loaded: a whole number, or refused
                shadow[key] = _state_io.step_count(f"state 'step' of {name}", value)
            elif value is not None:
                where = f"state {key!r} of {name}"
                shadow[key] = C.check_state(where, _view(where, value), pv, name)

        self._check_required(f"state of {name}", shadow, hyper)
        # (its state set by hand to the parameter's memory, or to its
        # gradient's: checked again when the state, or the memory of any of
        # them, changed: `.data = ...` or `set_()` on a state tensor counts
        # no change of the dicts)
        seen = (self._changes.n, p.data_ptr(), grad.data_ptr(),
                *(v.data_ptr() for k, v in state.items()
                  if k != "step" and isinstance(v, torch.Tensor)))
        assert self._seen is not None
        self._seen.append(seen)
        if self._apart.get(id(p)) != seen:
            C.check_no_overlap([(name, pv), (f"{name}.grad", gv)]
                               + [(f"state {key!r} of {name}", v) for key, v in shadow.items()
                                  if key != "step"])
            self._apart[id(p)] = seen

        def commit(shadow: dict) -> None:
            if not shadow:
                return
            st = self.state[p]  # (made now where the step made state: SGD's momentum buffer)
            for key, value in shadow.items():
                if key == "step":
                    if isinstance(st["step"], torch.Tensor):
                        st["step"].fill_(value)
                    else:  # loaded as a number (older state dicts): torch's layout again
                        st["step"] = torch.tensor(float(value))
                elif key not in st:
                    st[key] = _tensor(value)
        return pv, gv, shadow, hyper, commit, name

    def _state_of(self, p: torch.Tensor, hyper: dict) -> dict:
        """``p``'s state, made fresh where it has none (or an emptied one),
        noted for ``_plan`` to take back if the plan fails."""
        state = self.state.get(p)
        if state:
            return state
        fresh = self._new_state(p, hyper)
        if not fresh:  # SGD's: none kept, as torch keeps none (and no change counted,
            return {} if state is None else state  # so no plan made anew at each step)
        state = self.state[p]
        state.update(fresh)
        assert self._made is not None
        self._made.append(p)
        return state

    def _check_required(self, name: str, shadow: dict, hyper: dict) -> None:
        """Refuse a state without the keys its step reads (loaded or edited
        so), before any parameter is stepped, as the NumPy classes do."""
        cls = self._numpy_cls
        if self.spec.has_step and "step" not in shadow:
            raise ValueError(f"{name} has no 'step' (removed since its first step, or "
                             "loaded without one)")
        missing = [k for k in cls._required_state(self, shadow, hyper)
                   if k not in cls._MADE_BY_STEP and shadow.get(k) is None]
        if missing:
            raise ValueError(f"{name} lacks {missing} (removed, or loaded without them)")

    def _flush(self, run: list, hyper: dict, items: list) -> None:
        """Turn ``run`` (consecutive ``(buffer, index)`` in one buffer) into plan
        items, and empty it: their state made views of the flat state first."""
        if not run:
            return
        b, first = run[0]
        last = run[-1][1]
        run.clear()
        store = self._store(b, first, last)
        # Every parameter's state must be views of the flat state at its offset;
        # else it is adopted (copied in) first.
        params = [b.param(k) for k in range(first, last + 1)]
        keys = None
        for k, p in zip(range(first, last + 1), params):
            state = self._state_of(p, hyper)
            mine = store["views"].get(k)
            if mine is None or any(state.get(key) is not v for key, v in mine.items()) \
                    or len(state) != len(mine):
                self._adopt_state(b, k, state, store)
            here = frozenset(state)
            if keys is None:
                keys = here
            elif here != keys:  # state keys differ (amsgrad switched on midway): one at a time
                items.extend(("a flattened parameter", p) for p in params)
                return
        items.append(_Run(b, first, last, sorted(keys or ()), store))

    def _store(self, b: _Buffer, first: int, last: int) -> dict:
        """This optimizer's flat state in buffer ``b``: ``flat`` (key -> a
        tensor over ``span``, the buffer's elements from the first of this
        optimizer's parameters there to the last: an optimizer over the head
        of a model keeps state for the head only) and ``views`` (parameter
        index -> its state's views). A run outside the span (a group added)
        widens it: the flat state is made anew, and every parameter's state
        adopted into it again."""
        store = b.owners.get(self)
        a, z = b.offsets[first], b.offsets[last + 1]
        if store is not None and store["span"][0] <= a and z <= store["span"][1]:
            return store
        mine = [entry[1] for group in self.param_groups for p in group["params"]
                if (entry := _flat_entry(p)) is not None and entry[0] is b]
        lo, hi = b.offsets[min(mine, default=first)], b.offsets[max(mine, default=last) + 1]
        lo, hi = min(lo, a), max(hi, z)
        if store is None:
            store = b.owners[self] = {"views": {}, "flat": {}, "span": (lo, hi)}
        else:  # the old state's views are copied in as they are adopted again
            lo, hi = min(lo, store["span"][0]), max(hi, store["span"][1])
            store.update(views={}, span=(lo, hi),
                         flat={k: v for k, v in store["flat"].items() if k == "step"})
            self._changes.n += 1  # plans made before hold views of the old state
        return store

    def _adopt_state(self, b: _Buffer, k: int, state: dict, store: dict) -> None:
        """Copy parameter ``k``'s state into the flat state tensors and make its
        entries views of them."""
        p = b.param(k)
        views = {}
        for key, value in list(state.items()):
            if value is None:
                continue
            if key == "step":
                flat = store["flat"].get("step")
                if flat is None:
                    flat = store["flat"]["step"] = torch.zeros(b.count, dtype=torch.float32)
                flat[k] = float(value)
                view = flat[k]
            else:
                flat = _flat_state(b, store, key)
                lo = store["span"][0]
                view = flat[b.offsets[k] - lo:b.offsets[k + 1] - lo].view(p.shape)
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"state {key!r} of a flattened parameter has shape "
                                     f"{tuple(value.shape)}, the parameter {tuple(p.shape)}")
                view.copy_(value)
            state[key] = views[key] = view
        store["views"][k] = views

    def _track_state(self) -> None:
        """Make ``state`` a ``_State`` counting into ``_changes`` (torch's own
        code makes it a plain defaultdict, and a user may replace it)."""
        state = self.state
        if not (type(state) is _State and state.changes is self._changes):
            self.state = _State(self._changes, state.items())
            self._changes.n += 1  # (an empty one has counted nothing)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's. A state dict of the NumPy classes (``state_dict(to_torch=True)``
        or ``dequantize=True``) loads too: their own group options, which
        fastopt.torch does not take (``state_dtype`` and the bfloat16
        parameters' options), are left out, as torch's optimizers leave them
        unused, and the state is the float tensors it holds. Reduced-precision
        state as stored (codes and block scales) is refused: ask for it
        dequantized."""
        if isinstance(state_dict, dict):
            for i, s in (state_dict.get("state") or {}).items():
                if isinstance(s, dict) and s.get("state_dtype"):
                    raise ValueError(f"state_dict['state'][{i}] holds {s['state_dtype']} state "
                                     "as stored (codes and block scales); fastopt.torch takes "
                                     "float state: save it with state_dict(to_torch=True)")
            states = state_dict.get("state")
            if isinstance(states, dict):  # (a NumPy optimizer's dequantized dict: copies)
                state_dict = {**state_dict, "state": {
                    i: {k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                        for k, v in s.items()} if isinstance(s, dict) else s
                    for i, s in states.items()}}
            groups = state_dict.get("param_groups")
            if isinstance(groups, list):
                state_dict = {**state_dict, "param_groups": [
                    {k: v for k, v in g.items() if k not in _NOT_HERE} if isinstance(g, dict)
                    else g for g in groups]}
        super().load_state_dict(state_dict)

    def state_dict(self) -> dict[str, Any]:
        """torch's, its parameters' states as plain dicts (``torch.load``'s
        ``weights_only`` unpickler takes no other kind)."""
        sd = super().state_dict()
        sd["state"] = {k: dict(v) for k, v in sd["state"].items()}
        return sd

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._hyper_cache = {}
        self._plan_cache = {}
        self._apart = {}
        self._changes = getattr(self, "_changes", None) or _Changes()
        self._track_state()
        # As torch's own fill them: a state dict saved before an argument
        # existed (maximize, decoupled_weight_decay, ...) takes its default.
        defaults = {k: v for k, v in self.spec.defaults.items() if k not in _NOT_HERE}
        for group in self.param_groups:
            for key, value in {**defaults, **self._extra}.items():
                group.setdefault(key, value)


class _Run:
    """Consecutive flattened parameters of one group, stepped as one array:
    views of the flat parameter, gradient and state buffers."""

    def __init__(self, b: _Buffer, first: int, last: int, keys: list, store: dict):
        self.buffer, self.first, self.last, self.keys, self.store = b, first, last, keys, store
        self.name = (f"the flattened parameters {first} to {last} of their buffer" if last > first
                     else f"flattened parameter {first} of its buffer")
        a, z = b.offsets[first], b.offsets[last + 1]
        self.p = _view("a flat buffer", b.data)[a:z]
        self.g = _view("a flat gradient buffer", b.grad)[a:z]
        lo = store["span"][0]
        self.state = {key: _view(key, store["flat"][key])[a - lo:z - lo]
                      for key in keys if key != "step"}
        steps = store["flat"].get("step")
        self.steps = None if steps is None else steps.numpy()[first:last + 1]

    def entries(self, opt: _Optimizer, hyper: dict) -> list:
        """This step's plan entries: one, or one per parameter when their
        step counts differ."""
        steps = self.steps
        if steps is not None and steps.min() != steps.max():
            b = self.buffer
            return [opt._single("a flattened parameter", p, hyper)
                    for p in map(b.param, range(self.first, self.last + 1))]
        shadow: dict = dict(self.state)
        if steps is not None and "step" in self.keys:  # (removed from every state: refused)
            shadow["step"] = _state_io.step_count("state 'step' of a flattened parameter",
                                                  steps[0])
        opt._check_required(f"the state of {self.name}", shadow, hyper)
        return [(self.p, self.g, shadow, hyper, lambda shadow: self.commit(opt, shadow),
                 self.name)]

    def commit(self, opt: _Optimizer, shadow: dict) -> None:
        if self.steps is not None:
            self.steps[:] = shadow["step"]
        b, store = self.buffer, self.store
        lo = store["span"][0]
        a, z = b.offsets[self.first] - lo, b.offsets[self.last + 1] - lo
        for key, value in shadow.items():
            if key != "step" and value is not self.state.get(key):
                # created by the step (SGD's momentum buffer): into the flat state
                flat = _flat_state(b, store, key)
                flat[a:z].copy_(_tensor(value))
                for k in range(self.first, self.last + 1):
                    view = flat[b.offsets[k] - lo:b.offsets[k + 1] - lo].view(b.shapes[k])
                    opt.state[b.param(k)][key] = store["views"][k][key] = view


def _flat_state(b: _Buffer, store: dict, key: str) -> torch.Tensor:
    """The flat state tensor ``key`` of ``store`` (zeros over its span when new)."""
    flat = store["flat"].get(key)
    if flat is None:
        lo, hi = store["span"]
        flat = store["flat"][key] = torch.zeros(hi - lo, dtype=b.data.dtype, device=b.data.device)
    return flat


def _still_in_place(checks: list) -> bool:
    """Whether every ``(parameter, data pointer, gradient pointer or None)`` still holds."""
    for p, data, grad in checks:
        if p.data_ptr() != data:
            return False
        g = p.grad
        if g is None:
            if grad is not None:
                return False
        elif grad is None or g.data_ptr() != grad:
            return False
    return True


def _check_one_in_place(b: _Buffer, k: int) -> None:
    if b.param(k).data_ptr() != b.data_ptrs[k]:
        _check_in_place(b)


def _adopt_grad(b: _Buffer, k: int, g: torch.Tensor) -> None:
    """A flattened parameter's gradient that is not its buffer view (a backward
    after ``model.zero_grad()`` made a new one): copy it in, re-attach the view."""
    global _warned_copy
    p = b.param(k)
    if g.is_sparse or g.dtype != p.dtype or tuple(g.shape) != tuple(p.shape):
        raise TypeError(f"the gradient of a flattened parameter (shape {tuple(p.shape)}, "
                        f"{p.dtype}) is {'sparse' if g.is_sparse else g.dtype} of shape "
                        f"{tuple(g.shape)}")
    view = b.grad_view(k)
    view.copy_(g)
    p.grad = view
    if not _warned_copy:
        _warned_copy = True
        warnings.warn("fastopt.torch: a flattened parameter's .grad was replaced (model.zero_grad() "
                      "sets gradients to None, and backward then makes new ones): each step copies "
                      "them back into the flat buffer. Use the optimizer's zero_grad() (or "
                      "model.zero_grad(set_to_none=False)) to keep them in place.",
                      RuntimeWarning, stacklevel=4)


_DOC = """``torch.optim.{name}`` with fastopt's fused kernels (a ``torch.optim.Optimizer``).

    Built like torch's: ``{name}(params, ...)`` with torch's arguments and
    defaults (``foreach`` and ``fused`` are accepted and ignored;
    ``capturable`` and ``differentiable`` must stay False), parameter groups,
    ``add_param_group``, ``zero_grad``, ``state_dict``/``load_state_dict`` in
    torch's layout (state as torch tensors). ``step(closure=None, *,
    max_grad_norm=None, norm_type=2.0)`` steps every parameter with a
    ``.grad`` (see the module docstring).
    """


class SGD(_Optimizer):
    __doc__ = _DOC.format(name="SGD")
    _numpy_cls, _torch_cls = _numpy_optimizers.SGD, torch.optim.SGD
    spec = _numpy_optimizers.SGD.spec


class Adagrad(_Optimizer):
    __doc__ = _DOC.format(name="Adagrad")
    _numpy_cls, _torch_cls = _numpy_optimizers.Adagrad, torch.optim.Adagrad
    spec = _numpy_optimizers.Adagrad.spec

    def _group_added(self, group: dict) -> None:
        hyper = self._check_group(group, "the parameter group")
        for j, p in enumerate(group["params"]):
            if not self.state[p]:
                try:
                    self.state[p].update(self._new_state(p, hyper))
                except (TypeError, ValueError) as e:
                    raise type(e)(f"the new parameter group's params[{j}]: {e}") from None


class Adam(_Optimizer):
    __doc__ = _DOC.format(name="Adam")
    _numpy_cls, _torch_cls = _numpy_optimizers.Adam, torch.optim.Adam
    spec = _numpy_optimizers.Adam.spec


class AdamW(_Optimizer):
    __doc__ = _DOC.format(name="AdamW")
    _numpy_cls, _torch_cls = _numpy_optimizers.AdamW, torch.optim.AdamW
    spec = _numpy_optimizers.AdamW.spec

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's AdamW: an Adam state dict loads
            group["decoupled_weight_decay"] = True
