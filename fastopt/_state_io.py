"""State dicts: an optimizer's state in ``torch.optim``'s layout, out and in.

``build`` makes ``{"state": {index: {...}}, "param_groups": [...]}`` (live
arrays, NumPy copies or torch tensors); ``parse`` checks a state dict whole
against an optimizer and returns what ``load_state_dict`` commits, so a bad
dict changes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from . import _checks as C
from . import _cuda, _spec
from . import _state_dtype as D
from ._arrays import host_array, place_like
from ._params import check_state_kind


def build(optimizer: Any, to_host: bool = False, to_torch: bool = False,
          dequantize: bool = False) -> dict:
    """The state dict of ``optimizer`` (see ``Optimizer.state_dict``).

    Reduced-precision state is given as stored (bfloat16 as its uint16
    bits), with its ``"state_dtype"``; ``dequantize=True`` (implied by
    ``to_torch``: torch's optimizers would read codes as values) gives it as
    float32 arrays of the parameters' shapes instead, in torch's layout.
    """
    dequantize = dequantize or to_torch
    groups, index = [], 0
    for k, group in enumerate(optimizer.param_groups):
        # what load_state_dict will check of a schedule's keys, checked now (a
        # value set by hand would make a checkpoint that cannot be loaded)
        _spec.schedule_keys(f"param_groups[{k}]", group)
        n = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": list(range(index, index + n))})
        index += n
    convert: Callable[[Any], Any] | None = (_torch_copy() if to_torch
                                            else _host_copy if to_host else None)
    for i, s in optimizer.state.items():
        check_state_kind(i, s)
    state = {i: _stored_form(optimizer, i, s, dequantize) for i, s in optimizer.state.items()}
    if convert is not None:
        state = {i: {k: convert(v) for k, v in s.items()} for i, s in state.items()}
    return {"state": state, "param_groups": groups}


def _stored_form(optimizer: Any, i: int, state: dict, dequantize: bool) -> dict:
    """A parameter's state for a state dict: bfloat16 as its bits, or, with
    ``dequantize``, every state array as float32 of the parameter's shape."""
    codec = state.get("state_dtype")
    if not codec:
        return dict(state)
    keys = [k for k in optimizer.spec.state_keys if state.get(k) is not None]
    if dequantize:
        shape = optimizer._plist.views[i].shape
        out = {k: v for k, v in state.items()
               if k != "state_dtype" and not k.endswith("_absmax") and k not in keys}
        try:
            out.update({k: place_like(optimizer._plist.views[i], D.decode(codec, k, state, shape))
                        for k in keys})
        except ValueError as e:  # (state set by hand to another size)
            raise ValueError(f"params[{i}]'s {e}") from None
        return out
    out = dict(state)
    if codec == "bfloat16":
        out.update({k: state[k].view(np.uint16) if isinstance(state[k], np.ndarray) else state[k]
                    for k in keys})
    return out


def parse(optimizer: Any, state_dict: Any, params: list) -> tuple[list, dict]:
    """Check ``state_dict`` against ``optimizer`` (whose parameters, as the
    kernels take them, are ``params``); return ``(new_groups, new_state)``."""
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
        raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a dict")
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, "
                         f"the optimizer has {len(groups)}")
    spec = optimizer.spec
    index_of: dict = {}  # saved parameter id -> our parameter index
    new_groups, hypers, first = [], [], 0
    for k, (saved, group) in enumerate(zip(saved_groups, groups)):
        where = f"state_dict['param_groups'][{k}]"
        if not isinstance(saved, dict) or "params" not in saved:
            raise ValueError(f"{where} must be a dict with 'params'")
        try:
            ids = list(saved["params"])
        except TypeError:
            raise TypeError(f"{where}['params'] must be a list") from None
        if len(ids) != len(group["params"]):
            raise ValueError(f"{where} has {len(ids)} parameters, "
                             f"the optimizer's group {k} has {len(group['params'])}")
        for j, pid in enumerate(ids):
            try:
                index_of[pid] = first + j
            except TypeError:
                raise TypeError(f"{where}['params'][{j}] must be a parameter id, "
                                f"got {type(pid).__name__}") from None
        first += len(ids)
        # Pinned hyperparameters stay the class's: torch's AdamW, too, keeps
        # decoupled decay whatever the loaded dict says. So does state_dtype:
        # how this optimizer stores its state (loaded state is converted).
        # A schedule's keys (``initial_lr``...) come too, as torch keeps them.
        new_group = {**group, **{key: saved[key] for key in spec.defaults
                                 if key in saved and key not in spec.pinned
                                 and key != "state_dtype"},
                     **_spec.schedule_keys(where, saved)}
        try:
            hyper = spec.check(new_group)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
        new_groups.append({**new_group, **hyper})
        hypers.append(hyper)
    if len(index_of) != first:
        raise ValueError("state_dict['param_groups'] lists a parameter id more than once")
    group_of = [k for k, group in enumerate(groups) for _ in group["params"]]
    new_state = {}
    for pid, saved in saved_state.items():
        if pid not in index_of:
            raise ValueError(f"state_dict['state'] has an entry {pid!r} that no group lists")
        i = index_of[pid]
        if isinstance(saved, dict) and not saved:
            continue  # an empty entry: no state yet (torch's optimizers write these too)
        new_state[i] = _param_state(optimizer, f"state_dict['state'][{pid!r}]", saved,
                                    params[i], hypers[group_of[i]])
    return new_groups, new_state


def _param_state(optimizer: Any, name: str, saved: Any, p: Any, hyper: dict) -> dict:
    spec = optimizer.spec
    if not isinstance(saved, dict):
        raise TypeError(f"{name} must be a dict, got {type(saved).__name__}")
    allowed = (set(spec.state_keys) | ({"step"} if spec.has_step else set())
               | {"state_dtype"} | {k + "_absmax" for k in spec.state_keys}
               | ({"master"} if D.is_bfloat16(p) else set()))
    unknown = set(saved) - allowed
    if unknown:
        why = ("; a float32 master copy ('master') is kept for bfloat16 parameters only, and "
               f"this one is {p.dtype} (drop the key to continue from the saved moments)"
               if "master" in unknown else "")
        raise ValueError(f"{name} has unknown key(s) {sorted(map(str, unknown))}; "
                         f"expected {sorted(allowed)}{why}")
    state: dict = {}
    if spec.has_step:
        if "step" not in saved:
            raise ValueError(f"{name} has no 'step'")
        state["step"] = step_count(f"{name}['step']", saved["step"])
    want = D.resolve(hyper.get("state_dtype"), p, name)
    have = _saved_codec(name, saved, p, spec.state_keys)
    for key in spec.state_keys:
        if key not in saved or saved[key] is None:
            continue
        if have:
            # Stored exactly (the same codec), or decoded to float32 first.
            stored = {key + suffix: np.array(_stored_array(saved[key + suffix]), copy=True,
                                             order="C")
                      for suffix in D.layout(have, p) if key + suffix in saved}
            if have == want:
                state.update({k: place_like(p, v) for k, v in stored.items()})
                if want == "bfloat16" and isinstance(p, np.ndarray):
                    state[key] = state[key].view(D.bfloat16())
                continue
            value = D.decode(have, key, stored, p.shape)
        else:
            value = _host_value(f"{name}['{key}']", saved[key])
        a = _plain(f"{name}['{key}']", value, p)
        state.update(D.encode(want, key, a, p) if want else {key: place_like(p, a)})
    if saved.get("master") is not None:  # a bfloat16 parameter's float32 copy
        state["master"] = _plain(f"{name}['master']", _host_value(f"{name}['master']",
                                                                   saved["master"]), p)
    if want and any(k in state for k in spec.state_keys):
        state["state_dtype"] = want
    missing = set(optimizer._required_state(state, hyper)) - set(state)
    if missing:
        raise ValueError(f"{name} lacks {sorted(missing)}")
    return state


def _plain(name: str, value: Any, p: Any) -> np.ndarray:
    """A full-precision state array of ``p`` (another float dtype is cast to
    ``p``'s state dtype, as torch casts to the parameter's)."""
    a = np.array(value, dtype=D.plain_dtype(p), copy=True, order="C")
    if a.shape != p.shape:
        raise ValueError(f"{name} has shape {a.shape}, its parameter has shape {p.shape}")
    return a


def _saved_codec(name: str, saved: dict, p: Any, keys: tuple) -> str:
    """The codec of a saved parameter state ("" for float arrays), its arrays
    checked against the layout the codec gives ``p``."""
    codec = saved.get("state_dtype")
    absmax = [k for k in saved if k.endswith("_absmax")]
    if codec is None or codec == "":
        if absmax:
            raise ValueError(f"{name} has {sorted(absmax)} but no 'state_dtype'")
        return ""
    if codec not in ("bfloat16", *D.BLOCKWISE):
        raise ValueError(f"{name}['state_dtype'] must be 'bfloat16', 'int8' or 'int4', got {codec!r}")
    if p.dtype != np.float32:
        raise ValueError(f"{name} holds {codec} state, which needs a float32 parameter, "
                         f"got {p.dtype}")
    stored = {}
    for key in keys:
        for suffix, (shape, dtype) in D.layout(codec, p).items():
            if saved.get(key) is None:
                continue
            a = saved.get(key + suffix)
            if a is not None:
                a = _stored_array(a)
                # (bfloat16 bits as uint16 of this machine's byte order: the
                # other order, left as it is, is refused as absmax's is)
                if (codec == "bfloat16" and a.dtype.itemsize == 2 and a.dtype.kind in "uV"
                        and a.dtype.isnative):
                    a = a.view(np.uint16).view(dtype) if dtype != np.uint16 else a.view(np.uint16)
            stored[key + suffix] = a
    problem = D.fits(codec, p, stored, tuple(k for k in keys if saved.get(k) is not None))
    if problem:
        raise ValueError(f"{name} does not match its parameter's {codec} layout: {problem}")
    for key, a in stored.items():  # a block's scale, as the kernels make it: finite, >= 0
        if key.endswith("_absmax") and a is not None and not (np.isfinite(a) & (a >= 0)).all():
            raise ValueError(f"{name}[{key!r}] must hold finite block scales >= 0 (the "
                             "largest |value| of each block)")
    return codec


def step_count(name: str, value: Any) -> int:
    """A step count read from ``value`` (a number, NumPy scalar or tensor): a whole number >= 0."""
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
    if step >= C.STEP_LIMIT:
        raise ValueError(f"{name} is too large: it must be below 2**1023")
    return int(step)


def _stored_array(value: Any) -> np.ndarray:
    """A saved reduced-precision state array (codes, block scales, bfloat16
    bits) as NumPy: a GPU array copied to the host, a torch tensor viewed (a
    bfloat16 one as its bits, which NumPy cannot hold as bfloat16)."""
    if _cuda.is_cuda_array(value):
        return host_array(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch
            return t.contiguous().view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    return np.asarray(value)


def _host_value(name: str, value: Any) -> np.ndarray:
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
    if D.is_bfloat16(value):  # ml_dtypes' bfloat16: widened exactly, as torch's is
        value = value.astype(np.float32)
    if value.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {value.dtype}")
    return value


def _host_copy(value: Any) -> Any:
    """A state entry for ``state_dict(to_host=True)``: arrays as NumPy copies."""
    if isinstance(value, np.ndarray) or _cuda.is_cuda_array(value):
        return np.array(host_array(value), copy=True)
    return value


def _torch_copy() -> Callable[[Any], Any]:
    """The converter for ``state_dict(to_torch=True)``: arrays as torch tensor
    copies where the arrays live (GPU state stays on its GPU)."""
    try:
        import torch
    except ImportError:
        raise ImportError("state_dict(to_torch=True) needs PyTorch (pip install torch)") from None

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value, copy=True))
        if _cuda.is_cuda_array(value):
            return torch.as_tensor(value, device="cuda").clone()
        return value
    return convert
