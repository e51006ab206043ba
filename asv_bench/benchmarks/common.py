"""Shared pieces of the benchmark suite: the grid, the cases, the NumPy baseline.

The suite is taken from the working tree while asv installs fastopt from
each commit it benchmarks, so it uses only fastopt's public API (classes,
``fastopt.functional``, ``fastopt.config``) plus the roofline kernels, and
defines its own variants, byte counts and NumPy baseline: they must mean the
same thing at every commit of the history.

Environment (read when asv imports the suite):

``FASTOPT_ASV_SIZES``
    Comma-separated element counts replacing the default sizes, e.g.
    ``1e3,1e4`` for a smoke run.
``FASTOPT_ASV_LARGE=1``
    Adds 1e8 elements (up to ~5 GB per float64 amsgrad case).
"""

import ctypes.util
import importlib
import inspect
import math
import os
import sys
import timeit

import numpy as np

import fastopt
import fastopt.functional as F

# asv's `repeat` for the time benchmarks: per round, at least 10 and at most
# 100 samples, for at most ~2 s. (asv_runner 0.3 times one call per sample
# when a benchmark has a setup; its default of at most 10 samples, 5 per
# round, is too few for compare's statistics to see a 10 % change.)
REPEAT = (10, 100, 2.0)

# --- the grid -------------------------------------------------------------------

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
LARGE_SIZES = (100_000_000,)


def _size(text):
    """One element count of ``FASTOPT_ASV_SIZES`` (1000 or 1e3), at least 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (1 <= value < 2**40) or value != int(value):
        raise ValueError(f"FASTOPT_ASV_SIZES: {text.strip()!r} is not a whole number of elements >= 1")
    return int(value)


def _sizes():
    raw = os.environ.get("FASTOPT_ASV_SIZES", "").strip()
    sizes = [_size(s) for s in raw.split(",")] if raw else list(DEFAULT_SIZES)
    large = os.environ.get("FASTOPT_ASV_LARGE", "").strip()
    if large not in ("", "0", "1"):
        raise ValueError(f"FASTOPT_ASV_LARGE must be 1 (add 1e8 elements) or 0, got {large!r}")
    if large == "1":
        sizes += LARGE_SIZES
    return list(dict.fromkeys(sizes))  # in order, each once


SIZES = _sizes()
# The sizes of `python -m fastopt bench`'s serial rows (below the parallel threshold).
SERIAL_SIZES = [10_000, 50_000]
DTYPES = ["float32", "float64"]
# "cuda" runs where numba-cuda finds a GPU and skips elsewhere (require_target).
TARGETS = ["serial", "parallel", "cuda"]

LR, MOMENTUM, BETAS, EPS, WEIGHT_DECAY = 1e-3, 0.9, (0.9, 0.999), 1e-8, 1e-2
ADAGRAD_LR, ADAGRAD_EPS = 1e-2, 1e-10
STEP = 10  # the step number passed to Adagrad/Adam in the functional API

# name -> (optimizer class, class hyperparameters, arrays updated in place per step)
# The last column is the traffic shape (docs/measuring.md): a step reads the
# gradient and reads and writes each updated array.
VARIANTS = {
    "sgd": (fastopt.SGD, dict(lr=LR), 1),
    "sgd-momentum": (fastopt.SGD, dict(lr=LR, momentum=MOMENTUM), 2),
    "sgd-nesterov": (fastopt.SGD, dict(lr=LR, momentum=MOMENTUM, nesterov=True), 2),
    "adagrad": (fastopt.Adagrad, dict(lr=ADAGRAD_LR), 2),
    "adam": (fastopt.Adam, dict(lr=LR), 3),
    "adamw": (fastopt.AdamW, dict(lr=LR, weight_decay=WEIGHT_DECAY), 3),
    "adam-amsgrad": (fastopt.Adam, dict(lr=LR, amsgrad=True), 4),
}
VARIANT_NAMES = list(VARIANTS)


def updated_arrays(variant):
    return VARIANTS[variant][2]


def bytes_per_step(variant, n, dtype):
    """Bytes one fused step moves: the gradient read, each updated array read and written."""
    return (1 + 2 * updated_arrays(variant)) * n * np.dtype(dtype).itemsize


# --- one case: a parameter, its gradient and its state --------------------------

class Case:
    """The arrays of one (variant, dtype, n): ``p``, ``g`` and the state arrays.

    ``state`` holds the optimizer state the functional API needs (momentum
    buffer, Adagrad sum, Adam moments); NumPy and the functional API share
    the layout. Gradients are small normal numbers, so repeated steps stay
    finite and away from denormals. With ``target="cuda"`` the arrays are
    numba device arrays, and each step callable waits for the GPU.
    """

    def __init__(self, variant, dtype, n, seed=0, target=None):
        rng = np.random.default_rng(seed)
        self.variant, self.dtype, self.n = variant, np.dtype(dtype), n
        self.p = rng.standard_normal(n, dtype=self.dtype)
        self.g = rng.standard_normal(n, dtype=self.dtype)
        self.g *= 1e-3
        self.state = [np.zeros(n, self.dtype) for _ in range(updated_arrays(variant) - 1)]
        if variant in ("sgd-momentum", "sgd-nesterov"):
            self.state[0][:] = self.g  # as after a first step
        self.wait = None
        if target == "cuda":
            cuda = require_target("cuda")
            self.p, self.g = cuda.to_device(self.p), cuda.to_device(self.g)
            self.state = [cuda.to_device(a) for a in self.state]
            self.wait = cuda.synchronize

    def waiting(self, fn):
        """``fn``, followed by waiting for the GPU when the arrays are on one."""
        wait = self.wait
        if wait is None:
            return fn

        def step():
            fn()
            wait()

        return step

    def functional_step(self, target):
        """A no-argument callable: one step through ``fastopt.functional``."""
        return self.waiting(self._functional_step(target))

    def _functional_step(self, target):
        p, g, s, v = self.p, self.g, self.state, self.variant
        if v == "sgd":
            return lambda: F.sgd(p, g, lr=LR, target=target)
        if v in ("sgd-momentum", "sgd-nesterov"):
            nesterov = v == "sgd-nesterov"
            return lambda: F.sgd(p, g, s[0], lr=LR, momentum=MOMENTUM, nesterov=nesterov,
                                 target=target)
        if v == "adagrad":
            return lambda: F.adagrad(p, g, s[0], step=STEP, lr=ADAGRAD_LR, target=target)
        if v == "adam":
            return lambda: F.adam(p, g, s[0], s[1], step=STEP, lr=LR, target=target)
        if v == "adamw":
            return lambda: F.adamw(p, g, s[0], s[1], step=STEP, lr=LR,
                                   weight_decay=WEIGHT_DECAY, target=target)
        if v == "adam-amsgrad":
            return lambda: F.adam(p, g, s[0], s[1], s[2], step=STEP, lr=LR, amsgrad=True,
                                  target=target)
        raise ValueError(v)

    def class_step(self, target):
        """A no-argument callable: ``opt.step([g])`` of the optimizer class."""
        cls, hp, _ = VARIANTS[self.variant]
        opt = cls([self.p], **hp, target=target)
        grads = [self.g]
        return self.waiting(lambda: opt.step(grads))

    def numpy_step(self):
        """A no-argument callable: the step as plain NumPy whole-array code."""
        return lambda: numpy_step(self.variant, self.p, self.g, self.state, STEP)


def numpy_step(variant, p, g, state, t):
    """One step written as NumPy code usually is: whole-array expressions, with temporaries.

    The baseline fastopt is compared with; same rule as the fused kernels up
    to rounding (checked by tests/test_asv_bench.py).
    """
    if variant == "sgd":
        p -= LR * g
    elif variant in ("sgd-momentum", "sgd-nesterov"):
        buf = state[0]
        buf *= MOMENTUM
        buf += g
        p -= LR * (g + MOMENTUM * buf if variant == "sgd-nesterov" else buf)
    elif variant == "adagrad":
        s = state[0]
        s += g * g
        p -= ADAGRAD_LR * g / (np.sqrt(s) + ADAGRAD_EPS)
    else:
        m, v = state[0], state[1]
        beta1, beta2 = BETAS
        if variant == "adamw":
            p *= 1 - LR * WEIGHT_DECAY
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        if variant == "adam-amsgrad":
            np.maximum(state[2], v, out=state[2])
            v = state[2]
        step_size = LR / (1 - beta1 ** t)
        p -= step_size * m / (np.sqrt(v) / np.sqrt(1 - beta2 ** t) + EPS)


def roofline_step(updated, dtype, n, target):
    """A no-argument callable: the same-traffic roofline kernel (docs/measuring.md)."""
    if target == "cuda":
        return _cuda_roofline_step(updated, dtype, n)
    try:
        from fastopt.kernels.roofline import roofline
    except ImportError:
        raise NotImplementedError("this fastopt has no roofline kernels") from None
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(1)
    g = rng.standard_normal(n, dtype=dtype)
    arrays = [np.zeros(n, dtype) for _ in range(updated)]
    kernel, s = roofline(updated, target), dtype.type(1e-9)
    return lambda: kernel(g, s, *arrays)


# --- hooks ------------------------------------------------------------------------

def require_target(target):
    """Skip (NotImplementedError, asv's 'n/a') a target this fastopt or machine lacks.

    For "cuda", returns ``numba.cuda`` when fastopt has a CUDA target (it
    dispatches numba device arrays to it), numba-cuda is installed (the
    `cuda` extra; asv.conf.json's matrix does not install it) and finds a
    GPU. Never under the CUDA simulator: it would take hours per benchmark.
    """
    if target != "cuda":
        return None
    try:
        from fastopt._targets import TARGETS
    except ImportError:  # older commits kept them in _dispatch
        import fastopt._dispatch
        TARGETS = getattr(fastopt._dispatch, "TARGETS", ())
    if "cuda" not in TARGETS:
        raise NotImplementedError("this fastopt has no CUDA target")
    if not _DRIVER_FOUND:
        raise NotImplementedError("no NVIDIA driver library on this machine")
    try:
        importlib.import_module("numba_cuda")  # NVIDIA's CUDA target, not numba's old one
        from numba import config
        from numba import cuda
    except ImportError:
        raise NotImplementedError("numba-cuda is not installed") from None
    if getattr(config, "ENABLE_CUDASIM", False) or not cuda.is_available():
        raise NotImplementedError("no GPU (or only the CUDA simulator)")
    return cuda


def _driver_found():
    """Whether an NVIDIA driver library is there to load: a look that starts no GPU.

    Done once, at import: ``numba.cuda.is_available()`` takes ~0.2 s even
    where there is no driver, and each benchmark process would pay it. The
    real probe stays in the benchmark process, since a CUDA driver started
    before asv's fork is not usable after it.
    """
    return bool(os.environ.get("NUMBA_CUDA_DRIVER") or ctypes.util.find_library("cuda"))


_DRIVER_FOUND = _driver_found()


def _cuda_roofline_step(updated, dtype, n):
    cuda = require_target("cuda")
    try:  # where the launchers live (host side), or lived
        from fastopt._cuda import launcher
        ROOFLINE = {k: launcher(f"roofline_{k}") for k in (1, 2, 3, 4)}
    except ImportError:
        try:
            from fastopt.kernels.cuda import ROOFLINE
        except ImportError:
            raise NotImplementedError("this fastopt has no CUDA roofline kernels") from None
    dtype = np.dtype(dtype)
    g = cuda.to_device(np.random.default_rng(1).standard_normal(n, dtype=dtype))
    arrays = [cuda.to_device(np.zeros(n, dtype)) for _ in range(updated)]
    kernel, s = ROOFLINE[updated], dtype.type(1e-9)

    def step():
        kernel(g, s, *arrays)
        cuda.synchronize()

    return step


def require_arguments(fn, kwargs):
    """Skip when ``fn`` (of the fastopt being benchmarked) lacks a keyword in ``kwargs``."""
    missing = set(kwargs) - set(inspect.signature(fn).parameters)
    if missing:
        raise NotImplementedError(f"this fastopt's {fn.__name__} has no {sorted(missing)}")


def require_flat_params():
    if not hasattr(fastopt, "FlatParams"):
        raise NotImplementedError("this fastopt has no FlatParams")


# --- setup helpers ----------------------------------------------------------------

def _start_jit():
    """Load one serial kernel now, so that LLVM is initialised once, at import.

    asv's forkserver (asv.conf.json) imports the suite once and forks a
    process per benchmark; each child would otherwise spend ~0.3 s setting
    up LLVM before loading its kernels from numba's cache. Only a serial
    kernel: a parallel one would start numba's thread pool, which must not
    be forked.
    """
    p = np.zeros(1)
    F.sgd(p, np.zeros(1), lr=0.0, target="serial")


_start_jit()

_MEMO = {}


def memo(key, build):
    """``build()`` once per process for ``key``, keeping only the latest key.

    asv re-runs ``setup`` between samples (asv_runner 0.3 before every timed
    call). Rebuilding and re-warming 1e7-element arrays each time would make
    a run last for ages and time nothing more: state that a step leaves
    behind does not change what the next step costs. So setups keep their
    case here, and one process holds one case at a time.
    """
    if key not in _MEMO:
        _MEMO.clear()
        _MEMO[key] = build()
    return _MEMO[key]


def warm(fn, calls=2):
    """Call ``fn`` so that JIT compilation (or the cache load) and first-touch page faults are over."""
    for _ in range(calls):
        fn()


def best_seconds(fn, repeats=7, min_batch=5e-3):
    """Seconds of one ``fn()``: the best of ``repeats`` batches of at least ``min_batch`` seconds.

    For the track benchmarks, which time themselves and have no samples
    for asv's statistics: other load on the machine only ever adds time, so
    the best batch is the steadiest estimate of what the code costs.
    """
    number = 1
    while True:
        elapsed = timeit.timeit(fn, number=number)
        if elapsed >= min_batch or number >= 1 << 20:
            break
        number *= 2 if elapsed <= 0 else max(2, min(10, int(1.5 * min_batch / elapsed) + 1))
    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number


def reset_peak_rss():
    """Restart the process's peak-RSS count (Linux), so ``peakmem_`` sees the step, not setup.

    asv's ``peakmem_`` reports the process's peak resident memory, which
    otherwise includes importing numba, compiling and the warm-up in setup.
    After this, it is what is resident at the end of setup (arrays, code) plus
    whatever the step adds. Elsewhere this does nothing and peakmem includes
    setup.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
