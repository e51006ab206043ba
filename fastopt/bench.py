"""``python -m fastopt bench``: what fastopt does on this machine.

For each optimizer and size it times one step of fastopt (the optimizer
class on one array), the same-shape roofline kernel (the memory-bandwidth
limit, see ``fastopt.kernels.roofline``) and a plain NumPy implementation,
and prints milliseconds per step (median of several), GB/s moved, % of the
roofline and the speed-up over NumPy.

With ``--cuda`` (or ``--device cuda``) it also times the CUDA target on the
current GPU: fastopt's optimizer on device arrays, the CUDA roofline kernel of
the same traffic, and ``torch.optim``'s fused CUDA implementation when torch
with CUDA is installed. Without a GPU those rows are skipped with a message.

``make_step`` is the hook for other harnesses (asv): one step of fastopt,
the roofline or torch, on either device, as a zero-argument function.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

from . import config
from .kernels.roofline import roofline
from .optimizers import SGD, Adagrad, Adam, AdamW

# name -> (class, hyperparameters, arrays updated in place per step)
VARIANTS = {
    "sgd": (SGD, dict(lr=1e-3), 1),
    "sgd-momentum": (SGD, dict(lr=1e-3, momentum=0.9), 2),
    "adagrad": (Adagrad, dict(lr=1e-2), 2),
    "adam": (Adam, dict(lr=1e-3), 3),
    "adamw": (AdamW, dict(lr=1e-3), 3),
    "adam-amsgrad": (Adam, dict(lr=1e-3, amsgrad=True), 4),
}

FULL_SIZES = (10_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 1_000_000)
CUDA_SIZES = (10_000, 1_000_000, 10_000_000, 100_000_000)

# torch.optim classes with a fused CUDA implementation, per variant.
TORCH_FUSED = {"sgd": ("SGD", dict(lr=1e-3)), "sgd-momentum": ("SGD", dict(lr=1e-3, momentum=0.9)),
               "adam": ("Adam", dict(lr=1e-3)), "adamw": ("AdamW", dict(lr=1e-3)),
               "adam-amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True))}


def bytes_per_step(variant, n, dtype):
    """Bytes a fused step moves: the gradient read, each updated array read and written."""
    updated = VARIANTS[variant][2]
    return (1 + 2 * updated) * n * np.dtype(dtype).itemsize


def numpy_step(variant, p, g, state, t):
    """One step as plain NumPy code would write it (whole-array expressions)."""
    _, hp, _ = VARIANTS[variant]
    lr = hp["lr"]
    if variant == "sgd":
        p -= lr * g
    elif variant == "sgd-momentum":
        b = state.setdefault("b", g.copy()) if t == 1 else state["b"]
        if t > 1:
            b *= 0.9
            b += g
        p -= lr * b
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


def median_time(fn, repeats, min_total=0.0):
    """Median wall time of ``fn()`` in seconds, after one untimed warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_total and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _target(n):
    return "parallel" if n >= config.PARALLEL_THRESHOLD else "serial"


def _data(n, dtype):
    rng = np.random.default_rng(0)
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
    p, g = _data(n, dtype)
    if device == "cpu":
        if kind == "fastopt":
            opt = cls([p], **hp)
            return (lambda: opt.step([g])), _nothing
        if kind == "roofline":
            arrays = [np.zeros(n, dtype) for _ in range(updated)]
            kernel, s = roofline(updated, _target(n)), np.dtype(dtype).type(1e-9)
            return (lambda: kernel(g, s, *arrays)), _nothing
        raise ValueError(f"no {kind!r} step on the CPU")
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "torch":
        return _torch_step(variant, p, g)
    from . import _cuda
    cuda = _cuda.cuda()
    dp, dg = cuda.to_device(p), cuda.to_device(g)
    if kind == "fastopt":
        opt = cls([dp], **hp)
        return (lambda: opt.step([dg])), cuda.synchronize
    if kind == "roofline":
        arrays = [_cuda.new(n, dtype, 0) for _ in range(updated)]
        kernel, s = _cuda.kernels().ROOFLINE[updated], np.dtype(dtype).type(1e-9)
        return (lambda: kernel(dg, s, *arrays)), cuda.synchronize
    raise ValueError(f"kind must be 'fastopt', 'roofline' or 'torch', got {kind!r}")


def _nothing():
    pass


def _torch_step(variant, p, g):
    import torch
    if variant not in TORCH_FUSED:
        raise ValueError(f"torch has no fused CUDA {variant}")
    name, hp = TORCH_FUSED[variant]
    tp = torch.tensor(p, device="cuda")
    tp.grad = torch.tensor(g, device="cuda")
    opt = getattr(torch.optim, name)([tp], fused=True, **hp)
    return opt.step, torch.cuda.synchronize


def measure(variant, n, dtype, repeats, numpy_repeats):
    """Time one variant at one size on the CPU; return a result dict (times in ms)."""
    step, _ = make_step(variant, n, dtype)
    t_fast = median_time(step, repeats, min_total=0.2)
    step, _ = make_step(variant, n, dtype, kind="roofline")
    t_roof = median_time(step, repeats, min_total=0.2)

    p, g = _data(n, dtype)
    q, state, count = p, {}, [0]

    def numpy_once():
        count[0] += 1
        numpy_step(variant, q, g, state, count[0])

    t_numpy = median_time(numpy_once, numpy_repeats)
    moved = bytes_per_step(variant, n, dtype)
    return {
        "optimizer": variant, "n": n, "dtype": np.dtype(dtype).name, "target": _target(n),
        "fastopt_ms": t_fast * 1e3, "gbps": moved / t_fast / 1e9,
        "roofline_ms": t_roof * 1e3, "roofline_pct": 100 * t_roof / t_fast,
        "numpy_ms": t_numpy * 1e3, "speedup_numpy": t_numpy / t_fast,
    }


def batch_time(step, wait, repeats, batch):
    """Median over ``repeats`` batches of the wall time per step of ``batch``
    back-to-back launches (launch costs overlap the GPU's work, as in training)."""
    step()
    wait()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batch):
            step()
        wait()
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def measure_cuda(variant, n, dtype, repeats):
    """Time one variant at one size on the GPU; return a result dict (times in ms)."""
    moved = bytes_per_step(variant, n, dtype)
    batch = max(3, min(200, int(2e9 / moved)))  # about 1 GB of traffic per batch, or more
    t_fast = batch_time(*make_step(variant, n, dtype, "cuda"), repeats, batch)
    t_roof = batch_time(*make_step(variant, n, dtype, "cuda", "roofline"), repeats, batch)
    try:
        t_torch = batch_time(*make_step(variant, n, dtype, "cuda", "torch"), repeats, batch)
    except (ImportError, ValueError, RuntimeError, AssertionError):
        t_torch = None  # no torch, no CUDA torch, or no fused implementation of this variant
    return {
        "optimizer": variant, "n": n, "dtype": np.dtype(dtype).name, "target": "cuda",
        "fastopt_ms": t_fast * 1e3, "gbps": moved / t_fast / 1e9,
        "roofline_ms": t_roof * 1e3, "roofline_pct": 100 * t_roof / t_fast,
        "torch_fused_ms": None if t_torch is None else t_torch * 1e3,
        "speedup_torch": None if t_torch is None else t_torch / t_fast,
    }


def cuda_device():
    """A description of the current GPU, or the reason there is none (str)."""
    from . import _cuda
    try:
        cuda = _cuda.cuda()
    except (ImportError, RuntimeError) as e:
        return None, str(e)
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {"gpu": name, "compute_capability": ".".join(map(str, dev.compute_capability))}, None


def machine():
    import numba
    return {"machine": platform.machine(), "processor": _cpu_name(), "cores": _cores(),
            "numba_threads": numba.get_num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cores():
    import os
    return os.cpu_count()


COLUMNS = [("optimizer", "optimizer", "{}"), ("n", "n", "{:.0e}"), ("dtype", "dtype", "{}"),
           ("target", "target", "{}"), ("fastopt_ms", "ms/step", "{:.3f}"),
           ("gbps", "GB/s", "{:.1f}"), ("roofline_pct", "% roofline", "{:.0f}%"),
           ("numpy_ms", "NumPy ms", "{:.3f}"), ("speedup_numpy", "vs NumPy", "{:.1f}x")]


CUDA_COLUMNS = COLUMNS[:7] + [("torch_fused_ms", "torch fused ms", "{:.3f}"),
                               ("speedup_torch", "vs torch", "{:.2f}x")]


def format_table(rows, columns=COLUMNS):
    cells = [[head for _, head, _ in columns]]
    for r in rows:
        cells.append(["-" if r[key] is None else fmt.format(r[key]) for key, _, fmt in columns])
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(sizes, dtypes, optimizers, repeats, numpy_repeats, progress=True, device="cpu"):
    rows = []
    jobs = [(v, n, d) for d in dtypes for n in sizes for v in optimizers]
    for k, (variant, n, dtype) in enumerate(jobs, 1):
        if progress:
            print(f"\r[{k}/{len(jobs)}] {device} {variant} n={n:.0e} {np.dtype(dtype).name}".ljust(60),
                  end="", file=sys.stderr, flush=True)
        if device == "cuda":
            rows.append(measure_cuda(variant, n, dtype, repeats))
        else:
            rows.append(measure(variant, n, dtype, repeats, numpy_repeats))
    if progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastopt bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (well under a minute)")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                        help="comma-separated element counts, e.g. 1e4,1e7")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu",
                        help="where to run: the CPU (default), the current GPU, or both")
    parser.add_argument("--cuda", action="store_const", dest="device", const="both",
                        help="add the CUDA rows (same as --device both)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = parser.parse_args(argv)
    unknown = set(args.optimizers) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    repeats, numpy_repeats = (5, 3) if args.quick else (15, 5)
    info = machine()
    text = args.json != "-"
    rows, cuda_rows = [], []
    if args.device in ("cpu", "both"):
        sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
        rows = run(sizes, dtypes, args.optimizers, repeats, numpy_repeats)
        if text:
            print(f"fastopt bench on {info['processor']} ({info['cores']} cores, "
                  f"{info['numba_threads']} numba threads), numpy {info['numpy']}, numba {info['numba']}")
            print("Medians; roofline = same-traffic in-place kernel, same target, same run.\n")
            print(format_table(rows))
    if args.device in ("cuda", "both"):
        gpu, why_not = cuda_device()
        if gpu is None:
            print(f"CUDA rows skipped: {why_not}", file=sys.stderr)
        else:
            info.update(gpu)
            sizes = args.sizes or (QUICK_SIZES if args.quick else CUDA_SIZES)
            cuda_rows = run(sizes, dtypes, args.optimizers, repeats, numpy_repeats, device="cuda")
            if text:
                print(f"\nfastopt bench on {gpu['gpu']} (compute capability {gpu['compute_capability']})")
                print("Medians of back-to-back steps; roofline = same-traffic in-place CUDA kernel; "
                      "torch = torch.optim fused=True on CUDA.\n")
                print(format_table(cuda_rows, CUDA_COLUMNS))
    if args.json:
        blob = json.dumps({"machine": info, "results": rows + cuda_rows}, indent=2)
        if args.json == "-":
            print(blob)
        else:
            with open(args.json, "w") as f:
                f.write(blob + "\n")
    return 0
