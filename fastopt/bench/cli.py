"""``python -m fastopt bench``: the command line, and ``run``, which takes the measurements."""

import argparse
import json
import os
import platform
import sys

import numpy as np

from .. import config
from .cases import VARIANTS, unavailable
from .children import BitsandbytesChild, TorchChild, measure_startup
from .gpu import cuda_device, measure_cuda
from .measure import check_rows, measure, measure_guards, measure_many, measure_threshold
from .noise import load
from .plotting import plot
from .reporting import noise_summary, report

# 1e4 and 5e4 run the serial loop (below PARALLEL_THRESHOLD), so that a slow
# serial loop shows in the table; 1e6 and 1e7 the parallel one.
FULL_SIZES = (10_000, 50_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 50_000, 1_000_000)
MANY = (2_000, 5_000)  # tensors, elements each
QUICK_MANY = (400, 5_000)
CUDA_SIZES = (10_000, 1_000_000, 10_000_000, 100_000_000)


def machine():
    """What the figures were measured on: CPU, cores, threads, versions, the threshold."""
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


def _jobs(args, dtypes, sizes):
    """``(variant, n, dtype)`` to measure; variants that cannot run here are
    left out, saying why once."""
    jobs, said = [], set()
    for d in dtypes:
        for n in sizes:
            for v in args.optimizers:
                why = unavailable(v, d, n)
                if why is None:
                    jobs.append((v, n, d))
                elif why not in said:
                    said.add(why)
                    print(f"skipped {why}", file=sys.stderr)
    return jobs


def _cuda_rows(args, dtypes, repeats, results, show):
    gpu, why_not = cuda_device()
    if gpu is None:
        print(f"CUDA rows skipped: {why_not}", file=sys.stderr)
        return
    results["gpu"] = gpu
    sizes = args.sizes or (QUICK_SIZES if args.quick else CUDA_SIZES)
    jobs = _jobs(args, dtypes, sizes)
    for k, (variant, n, dtype) in enumerate(jobs, 1):
        _progress(f"[{k}/{len(jobs)}] cuda {variant} n={n:.0e} {dtype}", show)
        results["cuda_rows"].append(measure_cuda(variant, n, dtype, repeats))
    check_rows(results["cuda_rows"])


def _bitsandbytes(args, threads, results):
    """bitsandbytes' 8-bit AdamW in a child process, or None, saying why (in
    ``results["bitsandbytes"]`` and on stderr) when it cannot run."""
    import importlib.util
    info = results["bitsandbytes"] = {"version": None, "skipped": None}
    if args.no_torch:
        info["skipped"] = "--no-torch"
    elif importlib.util.find_spec("bitsandbytes") is None:
        info["skipped"] = "bitsandbytes is not installed"
    else:
        child = BitsandbytesChild(threads)
        if child:
            info["version"] = child.version
            return child
        info["skipped"] = "bitsandbytes (or torch) cannot be imported"
    print(f"bitsandbytes AdamW8bit rows skipped: {info['skipped']}", file=sys.stderr)
    return None


def _cpu_rows(args, dtypes, rounds, results, show):
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    numpy_repeats = 3 if args.quick else 5
    import numba
    torch = None if args.no_torch else TorchChild(numba.get_num_threads())
    if torch:
        results["torch_version"] = torch.version
    jobs = _jobs(args, dtypes, sizes)
    bnb = None
    try:
        if any(v in BitsandbytesChild.VARIANTS for v, _, _ in jobs):
            bnb = _bitsandbytes(args, numba.get_num_threads(), results)
        for k, (variant, n, dtype) in enumerate(jobs, 1):
            _progress(f"[{k}/{len(jobs)}] {variant} n={n:.0e} {dtype}", show)
            results["rows"].append(measure(variant, n, dtype, rounds, numpy_repeats, torch, bnb))
        check_rows(results["rows"])
        if not args.skip_many:
            count, size = QUICK_MANY if args.quick else MANY
            _progress(f"many tensors: {count} x {size}", show)
            results["many"] = measure_many(count, size, "float32", rounds, torch)
    finally:
        for child in (torch, bnb):
            if child:
                child.close()
    _progress("check_finite cost", show)
    results["guards"] = measure_guards(max(sizes), dtypes[0], rounds)
    if args.threshold:
        _progress("serial/parallel threshold", show)
        rows, crossover = measure_threshold(dtypes[0], rounds)
        results["threshold"] = {"dtype": dtypes[0], "rows": rows, "crossover": crossover}
    _progress("start-up in a fresh process", show)
    results["startup"] = measure_startup()


def run(args):
    """Run the benchmarks that ``args`` ask for; return the results dict.

    Its ``noise`` entry holds the load average before and after and every
    warning of the noise checks (see ``fastopt.bench.noise``).
    """
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    show = not args.no_progress
    results = {"machine": None, "rows": [], "many": None, "guards": None, "startup": None,
               "threshold": None, "bitsandbytes": None, "gpu": None, "cuda_rows": [],
               "noise": {"load_before": load()}}
    if args.device in ("cuda", "both"):
        _cuda_rows(args, dtypes, 5 if args.quick else 15, results, show)
    if args.device != "cuda":
        _cpu_rows(args, dtypes, 3 if args.quick else 15, results, show)
    if show:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    results["noise"]["load_after"] = load()
    results["machine"] = machine()
    results["noise"] = noise_summary(results)
    return results


LARGEST_SIZE = 2**40  # elements: far beyond any machine's memory, within an int64


def whole(low, high=LARGEST_SIZE):
    """An argparse type: a whole number (written 20000 or 2e4) in [low, high]."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= value <= high) or value != int(value):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number between {low} and {high:.4g}")
        return int(value)
    return parse


def _sizes(text):
    """``--sizes``: comma-separated numbers of elements, each >= 1."""
    return [whole(1)(item) for item in text.split(",")]


# Arrays a case holds at once, per element, at most: the parameter and its
# gradient, three Adam-amsgrad state arrays, the roofline's four, NumPy's copy
# and state and its temporaries.
_ARRAYS_PER_ELEMENT = 16


def _check_memory(p, n, itemsize):
    """Refuse, before anything is measured, a size whose arrays cannot fit in
    this machine's memory (where it can be read)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    need = _ARRAYS_PER_ELEMENT * n * itemsize
    if need > memory:
        p.error(f"--sizes {n:.4g}: a case would hold about {need / 2**30:.3g} GiB of arrays, "
                f"more than this machine's {memory / 2**30:.3g} GiB of memory")


def _check_output(p, option, path):
    """Refuse, before anything is measured, an output ``path`` that cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        p.error(f"{option} {path}: is a folder")
    if not os.path.isdir(folder):
        p.error(f"{option} {path}: the folder {folder} does not exist")
    # Opened for appending (and removed again if it was made now): permission
    # bits alone (os.access) say yes to root, where /proc or a read-only
    # mount still refuse, after the whole run.
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        p.error(f"{option} {path}: cannot be written ({e.strerror or e})")
    if not existed:
        os.remove(path)


def parser():
    """The argument parser of ``python -m fastopt bench``."""
    p = argparse.ArgumentParser(prog="python -m fastopt bench",
                                description="Measure fastopt's optimizer steps on this machine.")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (under a minute)")
    p.add_argument("--sizes", type=_sizes, help="comma-separated element counts, e.g. 1e4,1e7")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32")
    p.add_argument("--optimizers", type=lambda s: s.split(","), default=list(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu",
                   help="where to run: the CPU (default), the current GPU, or both")
    p.add_argument("--cuda", action="store_const", dest="device", const="both",
                   help="add the CUDA rows (same as --device both)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the comparisons run in torch in the table: torch's fused "
                        "optimizers and bitsandbytes' 8-bit AdamW (the adam-int8 rows' "
                        "contender); --torch-loop is asked for separately")
    p.add_argument("--skip-many", action="store_true", help="skip the many-small-tensors case")
    p.add_argument("--threshold", action="store_true",
                   help="also measure where the parallel kernel starts to win")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout only)")
    p.add_argument("--plot", metavar="FILE.png", help="plot throughput against size (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--torch-loop", action="store_true",
                   help="also time the optimizer step of a PyTorch loop: fastopt.torch (with and "
                        "without flatten_, with clipping) against torch's fused step, in a child "
                        "process (python -m fastopt.bench.torch_loop; needs PyTorch)")
    return p


def torch_loop(quick, device, out=None):
    """Run ``python -m fastopt.bench.torch_loop`` in a child process (torch's
    thread pool stays out of this one), its report to ``out`` (default
    stdout); return its exit status. Skipped, saying why, where it cannot run."""
    import importlib.util
    import subprocess
    out = out or sys.stdout
    print("\nPyTorch training loop, optimizer step (python -m fastopt.bench.torch_loop):",
          file=out, flush=True)
    if importlib.util.find_spec("torch") is None:
        print("  skipped: needs PyTorch (pip install torch)", file=out)
        return 0
    cmd = [sys.executable, "-m", "fastopt.bench.torch_loop"] + (["--quick"] if quick else [])
    if device == "cuda":
        gpu, why_not = cuda_device()
        if gpu is None:
            print(f"  skipped on CUDA: {why_not}", file=out)
            return 0
        cmd += ["--device", "cuda"]
    child = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or ["(no message)"]
        print(f"  failed (exit status {child.returncode}): {lines[-1]}", file=out)
    elif child.stderr:
        print(child.stderr, end="", file=sys.stderr)
    return child.returncode


def main(argv=None):
    """Run ``python -m fastopt bench`` with ``argv``; return the exit status."""
    p = parser()
    args = p.parse_args(argv)
    unknown = set(args.optimizers) - set(VARIANTS)
    if unknown:
        p.error(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    args.optimizers = list(dict.fromkeys(args.optimizers))  # each measured once
    if args.sizes:
        args.sizes = list(dict.fromkeys(args.sizes))
        _check_memory(p, max(args.sizes), 8 if args.dtype != "float32" else 4)
    if args.json and args.json != "-":
        _check_output(p, "--json", args.json)
    if args.plot:
        import importlib.util
        _check_output(p, "--plot", args.plot)
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot needs matplotlib (pip install matplotlib)")
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
    elif args.plot:
        print(f"--plot {args.plot}: no CPU row was measured (the plot draws those): not "
              "written", file=sys.stderr)
    if args.device == "cuda" and results["gpu"] is None:
        print("nothing was measured: --device cuda, and no GPU (see above)", file=sys.stderr)
        return 1
    if args.torch_loop:  # with --json -, stdout holds the JSON alone
        return torch_loop(args.quick, args.device, sys.stderr if args.json == "-" else None)
    return 0
