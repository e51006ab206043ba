"""``python -m fastopt bench``: what fastopt does on this machine.

For each optimizer and size it times one step of fastopt (the optimizer
class on one array), the same-shape roofline kernel (the memory-bandwidth
limit, see ``fastopt.kernels.roofline``) and a plain NumPy implementation,
and prints milliseconds per step (median of several), GB/s moved, % of the
roofline and the speed-up over NumPy.
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


def measure(variant, n, dtype, repeats, numpy_repeats):
    """Time one variant at one size; return a result dict (times in ms)."""
    cls, hp, updated = VARIANTS[variant]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-3).astype(dtype)
    opt = cls([p], **hp)
    t_fast = median_time(lambda: opt.step([g]), repeats, min_total=0.2)

    arrays = [np.zeros(n, dtype) for _ in range(updated)]
    kernel, s = roofline(updated, _target(n)), np.dtype(dtype).type(1e-9)
    t_roof = median_time(lambda: kernel(g, s, *arrays), repeats, min_total=0.2)

    q, state, count = p.copy(), {}, [0]

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


def format_table(rows):
    cells = [[head for _, head, _ in COLUMNS]]
    for r in rows:
        cells.append([fmt.format(r[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(row[c]) for row in cells) for c in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(sizes, dtypes, optimizers, repeats, numpy_repeats, progress=True):
    rows = []
    jobs = [(v, n, d) for d in dtypes for n in sizes for v in optimizers]
    for k, (variant, n, dtype) in enumerate(jobs, 1):
        if progress:
            print(f"\r[{k}/{len(jobs)}] {variant} n={n:.0e} {np.dtype(dtype).name}".ljust(60),
                  end="", file=sys.stderr, flush=True)
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
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = parser.parse_args(argv)
    unknown = set(args.optimizers) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    repeats, numpy_repeats = (5, 3) if args.quick else (15, 5)
    info = machine()
    rows = run(sizes, dtypes, args.optimizers, repeats, numpy_repeats)
    if args.json != "-":
        print(f"fastopt bench on {info['processor']} ({info['cores']} cores, "
              f"{info['numba_threads']} numba threads), numpy {info['numpy']}, numba {info['numba']}")
        print(f"Medians; roofline = same-traffic in-place kernel, same target, same run.\n")
        print(format_table(rows))
    if args.json:
        blob = json.dumps({"machine": info, "results": rows}, indent=2)
        if args.json == "-":
            print(blob)
        else:
            with open(args.json, "w") as f:
                f.write(blob + "\n")
    return 0
