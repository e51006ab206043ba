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


import math
import sys
import threading
import warnings
import weakref

import numpy as np

from . import _checks as C
from . import _cuda
from . import functional as F
from ._dispatch import host_array, new_like, place_like
from .flat import FlatParams, FlatSegment

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


class Optimizer:
    """Base class: parameter groups, per-parameter state, state dicts.

    Subclasses set ``_state_keys`` (the arrays of a parameter's state),
    ``_has_step`` (whether the state counts steps) and ``_pinned``
    (hyperparameters the class fixes, e.g. AdamW's decoupled decay), and
    implement ``_check_group`` (validate and normalise a group's
    hyperparameters), ``_new_state`` and ``_update``; optionally
    ``_group_added`` and ``_required_state``.

    State follows the parameter object, not its position: ``param_groups``
    and each group's ``"params"`` may be edited between steps (reordered,
    shortened, extended, entries replaced), as with ``torch.optim``. Every
    step checks the parameter list again when it has changed, and checks that
    each parameter still fits its state, before anything is written.
    ``opt.state`` is keyed by the parameters' current positions.
    """

    _state_keys = ()
    _has_step = True
    _pinned = {}

    def __init__(self, params, defaults, *, target=None):
        self.target = C.check_target(target)
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._lock = threading.RLock()  # one step, state dict or group change at a time
        self._flat_grad = {}   # id(parameter) -> its FlatParams gradient buffer
        self._params = []      # the parameter objects at the last check, in order
        self._ids = ()         # their ids (the objects are held, so ids stay unique)
        self._views = []       # the same, as the kernels take them
        self._shapes = []      # their shapes when checked
        self._detached = {}    # id -> (parameter, state) of parameters taken out of the groups
        self._hyper_cache = {}  # group index -> (typed hyperparameter values, checked dict)
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
        _LIVE.add(self)

    # --- groups --------------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a group (a dict with "params" and optional hyperparameters)."""
        with self._lock:
            self._sync()
            if not isinstance(param_group, dict):
                raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
            n = len(self.param_groups)
            group = {**self.defaults, **param_group}
            self._sync(self.param_groups + [group], new_group=n)
            self.param_groups.append(group)
            self._group_added(group, len(self._params) - len(group["params"]),
                              self._views[len(self._params) - len(group["params"]):])

    def _group_added(self, group, first, views):
        """Hook run after a group is added (Adagrad initialises its state here);
        ``views`` are the group's parameters as the kernels take them."""

    def _sync(self, groups=None, new_group=None):
        """Bring the checked parameter list up to date with ``param_groups``.

        Cheap when nothing changed (the parameters are the same objects in
        the same order). Otherwise every group and parameter is checked again
        (as ``add_param_group`` does) and the state is re-keyed by parameter
        identity; on error nothing changes. ``groups`` and ``new_group``:
        check these groups instead, ``groups[new_group]`` being added.
        """
        if groups is None:
            groups = self.param_groups
            if type(groups) is list and all(type(g) is dict and type(g.get("params")) is list
                                            for g in groups):
                if tuple(id(p) for g in groups for p in g["params"]) == self._ids:
                    return
        if not isinstance(groups, list):
            raise TypeError(f"param_groups must be a list, got {type(groups).__name__}")
        lists, flat = [], {}
        for k, group in enumerate(groups):
            where = "the new parameter group" if k == new_group else f"param_groups[{k}]"
            lists.append(self._group_params(where, group, flat))
        params = [p for ps in lists for p in ps]
        views = [C.check_param(f"params[{i}]", p) for i, p in enumerate(params)]
        on_gpu = None
        for i, v in enumerate(views):
            here = not isinstance(v, np.ndarray)
            if on_gpu is None:
                on_gpu = here
            elif here != on_gpu:
                kinds = ("a GPU array", "a numpy.ndarray") if here else ("a numpy.ndarray", "a GPU array")
                raise TypeError(f"params[{i}] is {kinds[0]}, but params[0] is {kinds[1]}; "
                                "an optimizer's parameters must all be on the host or all on the GPU")
            C.check_target_matches(self.target, v, f"params[{i}]")
        seen = set()
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(f"params[{i}] is listed more than once "
                                 "(some parameters appear in more than one group, or twice in one)")
            seen.add(id(p))
        C.check_no_overlap([(f"params[{i}]", v) for i, v in enumerate(views)])
        old = {id(p): i for i, p in enumerate(self._params)}
        state = {}
        for j, p in enumerate(params):
            i = old.pop(id(p), None)
            if i is None:
                if id(p) in self._detached:
                    state[j] = self._detached[id(p)][1]
            elif i in self.state:
                state[j] = self.state[i]
            self._check_fits(j, views[j], state.get(j))
        if new_group is not None:
            group = groups[new_group]
            group.update(self._check_group(group))
        # Everything is checked: commit.
        for group, ps in zip(groups, lists):
            if group.get("params") is not ps:
                group["params"] = ps
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for p in params:
            self._detached.pop(id(p), None)
        for pid, i in old.items():  # taken out: kept, as torch keeps it, should it come back
            if i in self.state:
                self._detached[pid] = (self._params[i], self.state[i])
        self.state.clear()
        self.state.update(state)
        self._flat_grad.update(flat)
        known = set(self._ids)
        shared = _shared_with_other_optimizers(self, [v for p, v in zip(params, views)
                                                      if id(p) not in known])
        self._params, self._ids, self._views = params, tuple(id(p) for p in params), views
        self._shapes = [v.shape for v in views]
        self._on_gpu = on_gpu
        self._hyper_cache.clear()
        if shared:
            warnings.warn(f"a parameter of this {type(self).__name__} is also a parameter of "
                          f"another live {shared}: fastopt does not lock parameters across "
                          "optimizers, so never step both from two threads at once (updates "
                          "would be lost)", RuntimeWarning, stacklevel=_caller_level())

    def _group_params(self, where, group, flat):
        """A group's parameters as a new list, FlatParams and segments replaced by
        their buffers (their gradient buffers recorded in ``flat``); the group's
        keys checked."""
        if not isinstance(group, dict):
            raise TypeError(f"{where} must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{where} needs a 'params' entry")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}")
        ps = group["params"]
        if isinstance(ps, (np.ndarray, FlatParams, FlatSegment)) or _cuda.is_cuda_array(ps):
            ps = [ps]
        elif isinstance(ps, (list, tuple)):
            ps = list(ps)
        else:
            raise TypeError(f"{where}['params'] must be a list of arrays, got {type(ps).__name__}")
        if not ps:
            raise ValueError(f"{where} has an empty 'params' list")
        for k, p in enumerate(ps):
            if isinstance(p, (FlatParams, FlatSegment)):
                grad = p.grad_data
                ps[k] = p = p.data
                view = C.check_param(f"{where}['params'][{k}]", p)
                C.check_state(f"{where}['params'][{k}]'s grad_data", grad, view, "its data")
                C.check_no_overlap([("its data", view),
                                    (f"{where}['params'][{k}]'s grad_data",
                                     C.check_grad("grad_data", grad, view, "data"))])
                flat[id(p)] = grad
        return ps

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
        with self._lock:
            self._sync()
            check_finite = C.check_flag("check_finite", check_finite)
            params = self._current_views()
            inv_scale = C.check_grad_scale(grad_scale, {p.dtype for p in params})
            if grads is None:
                grads = [self._flat_grad.get(id(p)) for p in self._params]
                if any(g is None for g in grads):
                    raise TypeError("step() without grads needs every parameter to come from a "
                                    "FlatParams; pass one gradient per parameter")
                names = "FlatParams gradient of params[{}]"
            else:
                if (isinstance(grads, np.ndarray) or not hasattr(grads, "__len__")
                        or (self._on_gpu and _cuda.is_cuda_array(grads))):
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

    def _current_views(self):
        """The parameters as the kernels take them, checked again where they may
        have changed since (made read-only, resized in place; GPU tensors given
        new memory): a parameter whose shape changed must still fit its state."""
        params, shapes = self._params, self._shapes
        if self._on_gpu:
            views = [C.check_param(f"params[{i}]", p) for i, p in enumerate(params)]
        else:
            views = self._views
            for i, p in enumerate(params):
                flags = p.flags
                if p.shape != shapes[i] or not (flags.writeable and flags.c_contiguous):
                    views[i] = C.check_param(f"params[{i}]", p)
        for i, v in enumerate(views):
            if v.shape != shapes[i]:
                self._check_fits(i, v, self.state.get(i))
                shapes[i] = v.shape
        return views

    def _check_fits(self, i, p, state):
        """Parameter ``i`` (as the kernels take it) has the shape and dtype of its state."""
        for key in self._state_keys:
            a = state.get(key) if state else None
            if a is not None and (a.shape != p.shape or a.dtype != p.dtype):
                raise ValueError(f"params[{i}] is {p.dtype}{list(p.shape)}, but its state "
                                 f"'{key}' is {a.dtype}{list(a.shape)}: the parameter changed "
                                 "after its first step; give the optimizer a new array instead")

    def _checked_hypers(self):
        """Every group's checked hyperparameters. A group whose values (and their
        types) are the ones checked at the last step is not checked again."""
        cache = self._hyper_cache
        hypers = []
        for k, group in enumerate(self.param_groups):
            key = _hyper_key(group)
            cached = cache.get(k)
            if key is None or cached is None or cached[0] != key:
                missing = [name for name in self.defaults if name not in group]
                if missing:
                    raise ValueError(f"param_groups[{k}] lacks hyperparameter(s) {missing}")
                try:
                    checked = self._check_group(group)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"param_groups[{k}]: {e}") from None
                cached = cache[k] = (key, checked)
            hypers.append(cached[1])
        return hypers

    def _apply(self, params, grads, inv_scale, check_finite):
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

    def state_dict(self, to_host=False, to_torch=False):
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
            groups, index = [], 0
            for group in self.param_groups:
                n = len(group["params"])
                groups.append({**{k: v for k, v in group.items() if k != "params"},
                               "params": list(range(index, index + n))})
                index += n
            if to_torch:
                convert = _torch_copy()
            elif to_host:
                convert = _host_copy
            else:
                return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": groups}
            state = {i: {k: convert(v) for k, v in s.items()} for i, s in self.state.items()}
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state dict from :meth:`state_dict` (or torch's, for the same optimizer).

        Arrays (NumPy, GPU, or torch tensors of any float dtype) are copied in,
        cast to each parameter's dtype, to where the parameters live. The dict
        is checked whole before anything changes: a bad one raises and leaves
        the optimizer as it was.
        """
        with self._lock:
            self._sync()
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict):
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
            try:
                ids = list(saved["params"])
            except TypeError:
                raise TypeError(f"state_dict['param_groups'][{k}]['params'] must be a list") from None
            if len(ids) != len(group["params"]):
                raise ValueError(f"state_dict['param_groups'][{k}] has {len(ids)} parameters, "
                                 f"the optimizer's group {k} has {len(group['params'])}")
            for j, pid in enumerate(ids):
                try:
                    index_of[pid] = first + j
                except TypeError:
                    raise TypeError(f"state_dict['param_groups'][{k}]['params'][{j}] must be a "
                                    f"parameter id, got {type(pid).__name__}") from None
            first += len(ids)
            # Pinned hyperparameters stay the class's: torch's AdamW, too, keeps
            # decoupled decay whatever the loaded dict says.
            new_group = {**group, **{key: saved[key] for key in self.defaults
                                     if key in saved and key not in self._pinned}}
            try:
                new_group.update(self._check_group(new_group))
            except (TypeError, ValueError) as e:
                raise type(e)(f"state_dict['param_groups'][{k}]: {e}") from None
            new_groups.append(new_group)
        if len(index_of) != first:
            raise ValueError("state_dict['param_groups'] lists a parameter id more than once")
        params = self._current_views()
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
        self.state.clear()
        self.state.update(new_state)
        self._detached.clear()
        self._hyper_cache.clear()

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
            value = _host_value(f"{name}['{key}']", saved[key])
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


def _caller_level():
    """The ``stacklevel`` that points a warning at the first frame outside fastopt."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("fastopt"):
        frame, level = frame.f_back, level + 1
    return level


# Every optimizer alive, to warn when two share a parameter.
_LIVE = weakref.WeakSet()


def _shared_with_other_optimizers(me, views):
    """The class name of another live optimizer one of whose parameters shares
    memory with one of ``views`` (host arrays only), or None."""
    spans = [(v.__array_interface__["data"][0], v.nbytes) for v in views
             if isinstance(v, np.ndarray) and v.nbytes]
    if not spans:
        return None
    for other in list(_LIVE):
        if other is me:
            continue
        for w in other._views:
            if isinstance(w, np.ndarray) and w.nbytes:
                start = w.__array_interface__["data"][0]
                if any(s < start + w.nbytes and start < s + n for s, n in spans):
                    return type(other).__name__
    return None


_CACHEABLE = (float, int, bool, str, type(None))


def _hyper_key(group):
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


def _host_value(name, value):
    """A loaded state entry as a floating-point NumPy array (GPU arrays and
    torch tensors of any float dtype, bfloat16 included, are copied)."""
    try:
        if _cuda.is_cuda_array(value):
            value = host_array(value)
        elif type(value).__module__.startswith("torch") and hasattr(value, "detach"):
            value = value.detach().cpu()
            if not value.dtype.is_floating_point:
                raise TypeError(f"dtype {value.dtype}")
            if str(value.dtype) not in ("torch.float32", "torch.float64"):
                value = value.double()  # bfloat16 and float16: widen exactly
            value = value.numpy()
        elif not hasattr(value, "__array__"):
            raise TypeError(f"{type(value).__name__}")
        value = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a floating-point array, got {e}") from None
    if value.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {value.dtype}")
    return value


def _host_copy(value):
    """A state entry for ``state_dict(to_host=True)``: arrays as NumPy copies."""
    if isinstance(value, np.ndarray) or _cuda.is_cuda_array(value):
        return np.array(host_array(value), copy=True)
    return value


def _torch_copy():
    """The converter for ``state_dict(to_torch=True)``: arrays as torch tensor
    copies where the arrays live (GPU state stays on its GPU)."""
    try:
        import torch
    except ImportError:
        raise ImportError("state_dict(to_torch=True) needs PyTorch (pip install torch)") from None

    def convert(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value, copy=True))
        if _cuda.is_cuda_array(value):
            return torch.as_tensor(value, device="cuda").clone()
        return value
    return convert


def _load_step(name, value):
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        if hasattr(value, "item") and not isinstance(value, (int, float)):
            value = value.item()  # a NumPy scalar or array, or a torch tensor (torch saves floats)
        step = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large: it must be a whole number >= 0 that fits a float") from None
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(step) and step >= 0 and step == int(step)):
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

    _pinned = {"decoupled_weight_decay": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, target=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         target=target)

    def _check_group(self, g):
        h = super()._check_group(g)
        if not h["decoupled_weight_decay"]:
            raise ValueError("AdamW's decoupled_weight_decay must be True (it is what makes it "
                             "AdamW); use Adam for weight decay added to the gradient")
        return h
