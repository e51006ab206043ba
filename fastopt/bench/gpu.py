"""The CUDA rows: fastopt, the CUDA roofline and torch's fused CUDA optimizer on the current GPU."""

import numpy as np

from .cases import bytes_per_step, make_step, state_bytes_per_param
from .noise import check_row
from .timing import batch_time


def measure_cuda(variant, n, dtype, repeats):
    """Time one variant at one size on the GPU; return a result dict (times in ms)."""
    moved = bytes_per_step(variant, n, dtype)
    batch = max(3, min(200, int(2e9 / moved)))  # about 2 GB of traffic per batch (3 to 200 steps)
    t_fast = batch_time(*make_step(variant, n, dtype, "cuda"), repeats, batch)
    t_roof = batch_time(*make_step(variant, n, dtype, "cuda", "roofline"), repeats, batch)
    try:
        t_torch = batch_time(*make_step(variant, n, dtype, "cuda", "torch"), repeats, batch)
    except (ImportError, ValueError, RuntimeError, AssertionError):
        t_torch = None  # no torch, no CUDA torch, or no fused implementation of this variant
    return check_row({
        "optimizer": variant, "n": n, "dtype": np.dtype(dtype).name, "target": "cuda",
        "fastopt_ms": t_fast * 1e3, "gbps": moved / t_fast / 1e9,
        "state_bytes": state_bytes_per_param(variant, dtype),
        "roofline_ms": t_roof * 1e3, "roofline_pct": 100 * t_roof / t_fast,
        "torch_ms": None if t_torch is None else t_torch * 1e3,
        "speedup_torch": None if t_torch is None else t_torch / t_fast,
    })


def cuda_device():
    """``(description of the current GPU, None)``, or ``(None, why there is none)``."""
    from .. import _cuda
    try:
        cuda = _cuda.cuda()
    except (ImportError, RuntimeError) as e:
        return None, str(e)
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {"gpu": name, "compute_capability": ".".join(map(str, dev.compute_capability))}, None
