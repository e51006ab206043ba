"""What the bench times: the optimizer variants, their traffic, and one step of each contender."""

import numpy as np

from .. import config
from ..kernels.codecs import BLOCK, MIN_BLOCKWISE_SIZE
from ..kernels.roofline import roofline
from ..optimizers import SGD, Adagrad, Adam, AdamW

# name -> (class, hyperparameters, arrays updated in place per step)
VARIANTS = {
    "sgd": (SGD, dict(lr=1e-3), 1),
    "sgd-momentum": (SGD, dict(lr=1e-3, momentum=0.9), 2),
    "adagrad": (Adagrad, dict(lr=1e-2), 2),
    "adam": (Adam, dict(lr=1e-3), 3),
    "adamw": (AdamW, dict(lr=1e-3), 3),
    "adam-amsgrad": (Adam, dict(lr=1e-3, amsgrad=True), 4),
    # Reduced-precision state: the number is the roofline's arrays, the float32
    # roofline with the same traffic (bf16) or less (int8, int4).
    "adam-bf16": (Adam, dict(lr=1e-3, state_dtype="bfloat16"), 2),
    "adam-int8": (Adam, dict(lr=1e-3, state_dtype="int8"), 1),
    "adam-int4": (Adam, dict(lr=1e-3, state_dtype="int4"), 1),
}

def unavailable(variant, dtype, n):
    """Why ``variant`` cannot run on ``n`` elements of ``dtype`` here, or
    None: reduced-precision state needs float32 parameters, bfloat16 needs
    ml_dtypes, and int8/int4 state is float32 below ``MIN_BLOCKWISE_SIZE``
    elements (that row would be the float32 one under another name)."""
    state_dtype = VARIANTS[variant][1].get("state_dtype")
    if state_dtype is None:
        return None
    if np.dtype(dtype) != np.float32:
        return f"{variant}: reduced-precision state needs float32 parameters"
    if state_dtype in BLOCK and n < MIN_BLOCKWISE_SIZE:
        return (f"{variant} below {MIN_BLOCKWISE_SIZE:,} elements: such tensors keep "
                "float32 state (the adam rows)")
    if state_dtype == "bfloat16":
        import importlib.util
        if importlib.util.find_spec("ml_dtypes") is None:
            return f'{variant}: needs ml_dtypes (pip install "fastopt[lowp]")'
    return None


# Bytes of stored state per element and state array (block-wise: with its absmax).
STATE_BYTES = {"bfloat16": 2.0, "int8": 1 + 4 / 256, "int4": 0.5 + 4 / 128}

# torch.optim classes with a fused CUDA implementation, per variant.
TORCH_FUSED = {"sgd": ("SGD", dict(lr=1e-3)), "sgd-momentum": ("SGD", dict(lr=1e-3, momentum=0.9)),
               "adam": ("Adam", dict(lr=1e-3)), "adamw": ("AdamW", dict(lr=1e-3)),
               "adam-amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True))}


def bytes_per_step(variant, n, dtype):
    """Bytes a fused step moves: the gradient read, each updated array read and written."""
    hp = VARIANTS[variant][1]
    itemsize = np.dtype(dtype).itemsize
    if hp.get("state_dtype") is None:
        return roofline_bytes(variant, n, dtype)
    return int(n * (3 * itemsize + 2 * 2 * STATE_BYTES[hp["state_dtype"]]))


def roofline_bytes(variant, n, dtype):
    """Bytes the roofline kernel of ``variant`` moves: the gradient read,
    each of its arrays read and written (for reduced-precision state, the
    float roofline with the same traffic or less)."""
    return (1 + 2 * VARIANTS[variant][2]) * n * np.dtype(dtype).itemsize


def state_bytes_per_param(variant, dtype):
    """Bytes of optimizer state kept per parameter (float state: the parameter's dtype)."""
    _, hp, updated = VARIANTS[variant]
    if hp.get("state_dtype") is None:
        return (updated - 1) * np.dtype(dtype).itemsize
    return 2 * STATE_BYTES[hp["state_dtype"]]


def numpy_step(variant, p, g, state, t):
    """One step as plain NumPy code would write it (whole-array expressions)."""
    lr = VARIANTS[variant][1]["lr"]
    if variant == "sgd":
        p -= lr * g
    elif variant == "sgd-momentum":
        if t == 1:
            state["b"] = g.copy()
        else:
            state["b"] *= 0.9
            state["b"] += g
        p -= lr * state["b"]
    elif variant == "adagrad":
        s = state.setdefault("s", np.zeros_like(p))
        s += g * g
        p -= lr * g / (np.sqrt(s) + 1e-10)
    else:
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        if variant == "adamw":
            p *= 1 - lr * 1e-2
        m += (1 - 0.9) * (g - m)
        v *= 0.999
        v += (1 - 0.999) * g * g
        if variant == "adam-amsgrad":
            vmax = state.setdefault("vmax", np.zeros_like(p))
            np.maximum(vmax, v, out=vmax)
            v = vmax
        p -= (lr / (1 - 0.9 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** t) + 1e-8)


def target_for(n):
    """The CPU target fastopt picks for ``n`` elements."""
    return "parallel" if n >= config.PARALLEL_THRESHOLD else "serial"


def data(n, dtype, seed=0):
    """``(p, g)``: a parameter of normal numbers and a gradient a thousand times smaller."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(dtype), (rng.standard_normal(n) * 1e-3).astype(dtype)


def make_step(variant, n, dtype, device="cpu", kind="fastopt"):
    """``(step, wait)``: ``step()`` runs one step, ``wait()`` returns when it has finished.

    ``kind`` is "fastopt" (the optimizer class on one array of ``n``
    elements), "roofline" (the same-traffic in-place kernel) or "torch"
    (``torch.optim``'s fused CUDA implementation; ``device="cuda"`` only,
    and ValueError for a variant torch has none for). On the CPU ``wait``
    does nothing; on the GPU a step is only launched, and ``wait``
    synchronises. Arrays are made here, so call it in a benchmark's setup.
    """
    cls, hp, updated = VARIANTS[variant]
    p, g = data(n, dtype)
    if device == "cpu":
        if kind == "fastopt":  # the target the row is labelled with, as the roofline's
            opt = cls([p], target=target_for(n), **hp)
            return (lambda: opt.step([g])), _nothing
        if kind == "roofline":
            arrays = [np.zeros(n, dtype) for _ in range(updated)]
            kernel, s = roofline(updated, target_for(n)), np.dtype(dtype).type(1e-9)
            return (lambda: kernel(g, s, *arrays)), _nothing
        raise ValueError(f"no {kind!r} step on the CPU")
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "torch":
        return _torch_cuda_step(variant, p, g)
    from .. import _cuda
    cuda = _cuda.cuda()
    dp, dg = cuda.to_device(p), cuda.to_device(g)
    if kind == "fastopt":
        opt = cls([dp], **hp)
        return (lambda: opt.step([dg])), cuda.synchronize
    if kind == "roofline":
        arrays = [_cuda.new(n, dtype, 0) for _ in range(updated)]
        kernel, s = _cuda.launcher(f"roofline_{updated}"), np.dtype(dtype).type(1e-9)
        return (lambda: kernel(dg, s, *arrays)), cuda.synchronize
    raise ValueError(f"kind must be 'fastopt', 'roofline' or 'torch', got {kind!r}")


def _nothing():
    pass


def _torch_cuda_step(variant, p, g):
    import torch
    if variant not in TORCH_FUSED:
        raise ValueError(f"torch has no fused CUDA {variant}")
    name, hp = TORCH_FUSED[variant]
    tp = torch.tensor(p, device="cuda")
    tp.grad = torch.tensor(g, device="cuda")
    opt = getattr(torch.optim, name)([tp], fused=True, **hp)
    return opt.step, torch.cuda.synchronize
