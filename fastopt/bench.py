"""``python -m fastopt bench``: what fastopt does on this machine.

For each optimizer and size it times one step of fastopt (the optimizer
class on one array), the same-shape roofline kernel (the memory-bandwidth
limit, see ``fastopt.kernels.roofline``), a plain NumPy implementation and,
when torch is installed, torch's fused CPU optimizer (in a child process, so
the two thread pools do not compete). It prints milliseconds per step
(median of several), GB/s moved, % of the roofline and the speed-ups. Then
the many-small-tensors case (2,000 tensors of 5,000 floats: FlatParams
against torch over the 2,000 tensors) and the start-up cost of a fresh
process.

With ``--cuda`` (or ``--device cuda``) it also times the CUDA target on the
current GPU: fastopt's optimizer on device arrays, the CUDA roofline kernel of
the same traffic, and ``torch.optim``'s fused CUDA implementation when torch
with CUDA is installed. Without a GPU those rows are skipped with a message.

``make_step`` is the hook for other harnesses (asv): one step of fastopt,
the roofline or torch, on either device, as a zero-argument function.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from . import config
from .flat import FlatParams
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
MANY = (2_000, 5_000)  # tensors, elements each
QUICK_MANY = (400, 5_000)
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


def median_time(fn, repeats, min_seconds=0.0):
    """Median wall time of ``fn()`` in seconds, after one untimed warm-up call.

    Runs at least ``repeats`` times, and on until ``min_seconds`` have passed
    (at most 10,000 runs), so fast calls get enough samples.
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 10_000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _target(n):
    return "parallel" if n >= config.PARALLEL_THRESHOLD else "serial"


def _data(n, dtype, seed=0):
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


def roofline_time(variant, n, dtype, repeats):
    """Median seconds of the in-place kernel with ``variant``'s traffic on ``n``
    elements (CPU, the target fastopt picks for ``n``); its arrays are freed after."""
    return median_time(make_step(variant, n, dtype, kind="roofline")[0], repeats, min_seconds=0.2)


def _calls_per_block(fn, seconds=0.02):
    """How many calls of ``fn`` (already warm) take about ``seconds``: 3 to 1,000."""
    t0 = time.perf_counter()
    fn()
    return max(3, min(1_000, int(seconds / max(time.perf_counter() - t0, 1e-7))))


def _block(fn, calls):
    """Median seconds of ``calls`` timed calls of ``fn``."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(contenders, rounds, torch=None):
    """Time ``contenders`` (name -> zero-argument step, already set up) in turn,
    ``rounds`` times, so that they share the machine's drifts in memory
    bandwidth (large on a shared machine); with ``torch``, a ``TorchChild``
    set up for the same job, it takes its turn as "torch".

    Returns name -> list of per-round medians (seconds); blocks are sized from
    the first contender's speed.
    """
    steps = list(contenders.values())
    for fn in steps:
        fn()  # warm: compilation, page faults
    calls = _calls_per_block(steps[0])
    out = {name: [] for name in contenders}
    if torch:
        out["torch"] = []
    for _ in range(rounds):
        for name, fn in contenders.items():
            out[name].append(_block(fn, calls))
        if torch:
            out["torch"].append(torch.time(calls))
    return out


def _ratio(times, num, den):
    """Median over rounds of ``times[num] / times[den]``: a ratio measured side by side."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def measure(variant, n, dtype, rounds, numpy_repeats, torch=None):
    """Time one variant at one size on the CPU; return a result dict (times in ms).

    fastopt, the roofline (and torch's fused optimizer, if ``torch`` is a
    ``TorchChild``) are interleaved; NumPy, an order of magnitude slower at
    size, is timed after them.
    """
    if torch:
        torch.setup(variant, n, dtype)
    times = interleaved({"fastopt": make_step(variant, n, dtype)[0],
                         "roofline": make_step(variant, n, dtype, kind="roofline")[0]},
                        rounds, torch)
    t_fast = statistics.median(times["fastopt"])
    p, g = _data(n, dtype)
    q, state, count = p.copy(), {}, [0]

    def numpy_once():
        count[0] += 1
        numpy_step(variant, q, g, state, count[0])

    t_numpy = median_time(numpy_once, numpy_repeats)
    row = {
        "optimizer": variant, "n": n, "dtype": np.dtype(dtype).name, "target": _target(n),
        "fastopt_ms": t_fast * 1e3, "gbps": bytes_per_step(variant, n, dtype) / t_fast / 1e9,
        "roofline_ms": statistics.median(times["roofline"]) * 1e3,
        "roofline_pct": 100 * _ratio(times, "roofline", "fastopt"),
        "numpy_ms": t_numpy * 1e3, "speedup_numpy": t_numpy / t_fast,
    }
    if torch:
        row["torch_ms"] = statistics.median(times["torch"]) * 1e3
        row["speedup_torch"] = _ratio(times, "torch", "fastopt")
    return row


def measure_many(count, size, dtype, rounds, torch=None):
    """Adam over ``count`` tensors of ``size`` elements: FlatParams (one call), one
    array per tensor through the class API, the roofline over all the elements
    and, with ``torch``, torch's fused Adam over ``count`` tensors; interleaved."""
    n = count * size
    p, g = _data(n, dtype)
    flat = FlatParams({f"t{i}": size for i in range(count)}, dtype)
    flat.data[:], flat.grad_data[:] = p, g
    arrays = [p[i * size:(i + 1) * size].copy() for i in range(count)]
    grads = [g[i * size:(i + 1) * size].copy() for i in range(count)]
    del p, g
    flat_opt, sep_opt = Adam(flat, lr=1e-3), Adam(arrays, lr=1e-3)
    if torch:
        torch.setup("adam", n, dtype, count=count)
    times = interleaved({"flat": flat_opt.step, "separate": lambda: sep_opt.step(grads),
                         "roofline": make_step("adam", n, dtype, kind="roofline")[0]},
                        rounds, torch)
    out = {"tensors": count, "size": size, "dtype": np.dtype(dtype).name,
           "flat_ms": statistics.median(times["flat"]) * 1e3,
           "separate_ms": statistics.median(times["separate"]) * 1e3,
           "roofline_ms": statistics.median(times["roofline"]) * 1e3,
           "roofline_pct": 100 * _ratio(times, "roofline", "flat")}
    if torch:
        out["torch_ms"] = statistics.median(times["torch"]) * 1e3
        out["speedup_torch"] = _ratio(times, "torch", "flat")
    return out


def measure_guards(n, dtype, rounds):
    """Adam step with and without ``check_finite`` (and ``grad_scale``), interleaved."""
    p, g = _data(n, dtype)
    opt = Adam([p], lr=1e-3)
    times = interleaved({"plain": lambda: opt.step([g]),
                         "checked": lambda: opt.step([g], check_finite=True),
                         "scaled": lambda: opt.step([g], check_finite=True, grad_scale=1024.0)},
                        rounds)
    return {"n": n, "dtype": np.dtype(dtype).name,
            "plain_ms": statistics.median(times["plain"]) * 1e3,
            "check_finite_ms": statistics.median(times["checked"]) * 1e3,
            "check_finite_scaled_ms": statistics.median(times["scaled"]) * 1e3,
            "check_finite_cost_pct": 100 * (_ratio(times, "checked", "plain") - 1)}


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
        "torch_ms": None if t_torch is None else t_torch * 1e3,
        "speedup_torch": None if t_torch is None else t_torch / t_fast,
    }


def cuda_device():
    """``(description of the current GPU, None)``, or ``(None, why there is none)``."""
    from . import _cuda
    try:
        cuda = _cuda.cuda()
    except (ImportError, RuntimeError) as e:
        return None, str(e)
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {"gpu": name, "compute_capability": ".".join(map(str, dev.compute_capability))}, None


# --- torch, in a child process ------------------------------------------------

_TORCH_SERVER = r"""
import json, statistics, sys, time
try:
    import torch
except ImportError:
    print("null", flush=True)
    sys.exit(0)
torch.set_num_threads(int(sys.argv[1]))
print(json.dumps(torch.__version__), flush=True)
CLASSES = {"SGD": torch.optim.SGD, "Adagrad": torch.optim.Adagrad,
           "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
opt = params = None
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "setup":
        opt = params = None  # free the last job's tensors first
        dtype = getattr(torch, cmd["dtype"])
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(cmd["size"], generator=g, dtype=dtype).requires_grad_()
                  for _ in range(cmd["count"])]
        for p in params:
            p.grad = torch.randn(cmd["size"], generator=g, dtype=dtype) * 1e-3
        opt = CLASSES[cmd["cls"]](params, fused=True, **cmd["hp"])
        opt.step()
        opt.step()
        print("0", flush=True)
    else:
        times = []
        for _ in range(cmd["calls"]):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(json.dumps(statistics.median(times)), flush=True)
"""


class TorchChild:
    """torch's fused CPU optimizers in a child process, stepped on request.

    torch and numba each run a thread pool; in one process they spin against
    each other. In a child, torch's steps can still take turns with ours (see
    ``interleaved``). ``version`` is None when torch is not installed.
    """

    def __init__(self, threads):
        self._proc = subprocess.Popen([sys.executable, "-c", _TORCH_SERVER, str(threads)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = json.loads(self._proc.stdout.readline() or "null")
        if self.version is None:
            self.close()

    def __bool__(self):
        return self.version is not None

    def _ask(self, **cmd):
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the torch child process ended")
        return json.loads(line)

    def setup(self, variant, n, dtype, count=1):
        """Build torch's fused optimizer for ``variant`` over ``count`` tensors of ``n // count``."""
        cls, hp, _ = VARIANTS[variant]
        self._ask(cmd="setup", cls=cls.__name__, hp=hp, dtype=np.dtype(dtype).name,
                  count=count, size=n // count)

    def time(self, calls):
        """Median seconds of ``calls`` timed steps."""
        return self._ask(cmd="time", calls=calls)

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()


# --- start-up -----------------------------------------------------------------

_STARTUP_CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np, fastopt
t1 = time.perf_counter()
p = np.zeros(1000, np.float32)
opt = fastopt.Adam([p])
opt.step([np.ones(1000, np.float32)])
t2 = time.perf_counter()
print(f"{(t1 - t0) * 1e3} {(t2 - t1) * 1e3}")
"""


def measure_startup():
    """(import ms, first Adam step ms) in a fresh process, kernels already cached."""
    proc = subprocess.run([sys.executable, "-c", _STARTUP_CHILD], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    imp, first = map(float, proc.stdout.split())
    return {"import_ms": imp, "first_step_ms": first}


# --- serial/parallel threshold --------------------------------------------------

def measure_threshold(dtype, rounds):
    """Serial and parallel Adam steps over sizes, interleaved; the first size
    from which parallel wins at every larger size too."""
    rows = []
    for n in [2 ** k for k in range(10, 21)]:
        p, g = _data(n, dtype)
        serial, parallel = Adam([p.copy()], target="serial"), Adam([p.copy()], target="parallel")
        times = interleaved({"serial": lambda: serial.step([g]),
                             "parallel": lambda: parallel.step([g])}, rounds)
        rows.append({"n": n, "serial_us": statistics.median(times["serial"]) * 1e6,
                     "parallel_us": statistics.median(times["parallel"]) * 1e6})
    crossover = None
    for r in reversed(rows):
        if r["parallel_us"] >= r["serial_us"]:
            break
        crossover = r["n"]
    return rows, crossover


# --- output --------------------------------------------------------------------

COLUMNS = [("optimizer", "optimizer", "{}"), ("n", "n", "{:.0e}"), ("dtype", "dtype", "{}"),
           ("target", "target", "{}"), ("fastopt_ms", "ms/step", "{:.3f}"),
           ("gbps", "GB/s", "{:.1f}"), ("roofline_pct", "% roofline", "{:.0f}%"),
           ("numpy_ms", "NumPy ms", "{:.3f}"), ("speedup_numpy", "vs NumPy", "{:.1f}x"),
           ("torch_ms", "torch ms", "{:.3f}"), ("speedup_torch", "vs torch", "{:.2f}x")]


def format_table(rows, columns):
    """Right-aligned text table; missing values print as '-'."""
    cells = [[head for _, head, _ in columns]]
    for r in rows:
        cells.append([fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows, path):
    """Throughput against size, one panel per dtype, each optimizer in its own
    colour with its same-traffic roofline dashed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastopt[plot]'") from None
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.5), squeeze=False,
                             sharey=True)
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, dtype in zip(axes[0], dtypes):
        for variant in VARIANTS:
            rs = sorted((r for r in rows if r["optimizer"] == variant and r["dtype"] == dtype),
                        key=lambda r: r["n"])
            if not rs:
                continue
            n = [r["n"] for r in rs]
            ax.plot(n, [r["gbps"] for r in rs], "o-", color=colours[variant], label=variant)
            roof = [bytes_per_step(variant, r["n"], dtype) / r["roofline_ms"] / 1e6 for r in rs]
            ax.plot(n, roof, "--", color=colours[variant], alpha=0.45)
        ax.set_xscale("log")
        ax.set_xlabel("elements")
        ax.set_title(f"{dtype}: fastopt (solid) and same-traffic roofline (dashed)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("GB/s moved per step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    import numba
    return {"processor": _cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(),
            "numba_threads": numba.get_num_threads(), "threading_layer": _threading_layer(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "parallel_threshold": config.PARALLEL_THRESHOLD}


def _threading_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _progress(msg, enabled):
    if enabled:
        print(f"\r{msg}".ljust(70), end="", file=sys.stderr, flush=True)


def run(args):
    """Run the benchmarks that ``args`` ask for; return the results dict."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    repeats, numpy_repeats = (5, 3) if args.quick else (15, 5)
    rounds = 3 if args.quick else 15
    show = not args.no_progress
    import numba
    threads = numba.get_num_threads()
    results = {"machine": None, "rows": [], "many": None, "guards": None, "startup": None,
               "threshold": None, "gpu": None, "cuda_rows": []}

    if args.device in ("cuda", "both"):
        gpu, why_not = cuda_device()
        if gpu is None:
            print(f"CUDA rows skipped: {why_not}", file=sys.stderr)
        else:
            results["gpu"] = gpu
            cuda_sizes = args.sizes or (QUICK_SIZES if args.quick else CUDA_SIZES)
            cjobs = [(v, n, d) for d in dtypes for n in cuda_sizes for v in args.optimizers]
            for k, (variant, n, dtype) in enumerate(cjobs, 1):
                _progress(f"[{k}/{len(cjobs)}] cuda {variant} n={n:.0e} {dtype}", show)
                results["cuda_rows"].append(measure_cuda(variant, n, dtype, repeats))
    if args.device == "cuda":
        if show:
            print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
        results["machine"] = machine()
        return results

    torch = None if args.no_torch else TorchChild(threads)
    if torch:
        results["torch_version"] = torch.version
    try:
        jobs = [(v, n, d) for d in dtypes for n in sizes for v in args.optimizers]
        for k, (variant, n, dtype) in enumerate(jobs, 1):
            _progress(f"[{k}/{len(jobs)}] {variant} n={n:.0e} {dtype}", show)
            results["rows"].append(measure(variant, n, dtype, rounds, numpy_repeats, torch))
        if not args.skip_many:
            count, size = QUICK_MANY if args.quick else MANY
            _progress(f"many tensors: {count} x {size}", show)
            results["many"] = measure_many(count, size, "float32", rounds, torch)
    finally:
        if torch:
            torch.close()

    _progress("check_finite cost", show)
    results["guards"] = measure_guards(max(sizes), dtypes[0], rounds)

    if args.threshold:
        _progress("serial/parallel threshold", show)
        rows, crossover = measure_threshold(dtypes[0], rounds)
        results["threshold"] = {"dtype": dtypes[0], "rows": rows, "crossover": crossover}

    _progress("start-up in a fresh process", show)
    results["startup"] = measure_startup()
    if show:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    results["machine"] = machine()
    return results


CUDA_COLUMNS = COLUMNS[:7] + [("torch_ms", "torch fused ms", "{:.3f}"),
                               ("speedup_torch", "vs torch", "{:.2f}x")]


def report(results):
    m = results["machine"]
    lines = []
    if results["gpu"]:
        gpu = results["gpu"]
        lines += [f"fastopt bench on {gpu['gpu']} (compute capability {gpu['compute_capability']})",
                  "Medians of back-to-back steps; roofline = same-traffic in-place CUDA kernel; "
                  "torch = torch.optim fused=True on CUDA.", "",
                  format_table(results["cuda_rows"], CUDA_COLUMNS), ""]
    if not results["rows"]:
        return "\n".join(lines)
    lines += [f"fastopt bench: {m['processor']}, {m['cores']} cores, {m['numba_threads']} numba threads "
             f"({m['threading_layer']}), numpy {m['numpy']}, numba {m['numba']}"
             + (f", torch {results['torch_version']}" if results.get("torch_version") else ""),
             "Medians. roofline: same-traffic in-place kernel, same target, same run. "
             "torch: fused=True, child process.", "",
             format_table(results["rows"], COLUMNS)]
    many = results["many"]
    if many:
        lines += ["", f"Adam over {many['tensors']:,} tensors of {many['size']:,} {many['dtype']} "
                      f"({many['tensors'] * many['size']:.0e} elements):",
                  f"  fastopt FlatParams (one call)   {many['flat_ms']:8.3f} ms   "
                  f"{many['roofline_pct']:.0f}% of roofline ({many['roofline_ms']:.3f} ms)",
                  f"  fastopt, one array per tensor   {many['separate_ms']:8.3f} ms"]
        if many.get("torch_ms") is not None:
            lines.append(f"  torch fused, {many['tensors']:,} tensors        {many['torch_ms']:8.3f} ms"
                         f"   (FlatParams is {many['speedup_torch']:.1f}x faster)")
    gd = results["guards"]
    if gd:
        lines += ["", f"Adam step at n={gd['n']:.0e} {gd['dtype']}: {gd['plain_ms']:.3f} ms; with "
                      f"check_finite {gd['check_finite_ms']:.3f} ms (+{gd['check_finite_cost_pct']:.0f}%); "
                      f"with check_finite and grad_scale {gd['check_finite_scaled_ms']:.3f} ms"]
    th = results["threshold"]
    if th:
        lines += ["", f"Serial vs parallel Adam step ({th['dtype']}), microseconds:",
                  format_table(th["rows"], [("n", "n", "{}"), ("serial_us", "serial", "{:.1f}"),
                                            ("parallel_us", "parallel", "{:.1f}")]),
                  f"parallel wins from n = {th['crossover']} on "
                  f"(fastopt.config.PARALLEL_THRESHOLD is {m['parallel_threshold']})"]
    st = results["startup"]
    if st:
        lines += ["", f"Fresh process: import fastopt {st['import_ms']:.0f} ms, "
                      f"first Adam step (kernels from the disk cache) {st['first_step_ms']:.0f} ms"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastopt bench",
                                     description="Measure fastopt's optimizer steps on this machine.")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (under a minute)")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                        help="comma-separated element counts, e.g. 1e4,1e7")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu",
                        help="where to run: the CPU (default), the current GPU, or both")
    parser.add_argument("--cuda", action="store_const", dest="device", const="both",
                        help="add the CUDA rows (same as --device both)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch comparison")
    parser.add_argument("--skip-many", action="store_true", help="skip the many-small-tensors case")
    parser.add_argument("--threshold", action="store_true",
                        help="also measure where the parallel kernel starts to win")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout only)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot throughput against size (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    unknown = set(args.optimizers) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.sizes and min(args.sizes) < 1:
        parser.error("--sizes must be positive")
    results = run(args)
    if args.json != "-":
        print(report(results))
    if args.json:
        blob = json.dumps(results, indent=2)
        if args.json == "-":
            print(blob)
        else:
            with open(args.json, "w") as f:
                f.write(blob + "\n")
    if args.plot and results["rows"]:
        plot(results["rows"], args.plot)
        if args.json != "-":
            print(f"\nplot written to {args.plot}")
    return 0
