"""The one place that chooses where work runs: which compiled kernel (serial,
parallel or CUDA) updates a parameter, and how parallel kernels are kept
safe (threading layers, fork) and worth their cost (``_Timed``)."""

import os
import threading
import time
import warnings

import numpy as np

from . import config
from ._checks import caller_level as _caller_level
from .kernels.cpu import KERNELS

from ._targets import TARGETS  # noqa: F401  (re-exported: where work can run)

# numba's "workqueue" threading layer aborts the process when two threads run
# parallel code at once. Until the first parallel kernel has run, the layer
# is unknown; after it, ``_layer_is_safe`` says whether parallel kernels may
# run concurrently (omp and tbb: yes).
_layer_is_safe = None
_parallel_lock = threading.Lock()

# Whether numba's threading layer failed to load (a layer named in
# NUMBA_THREADING_LAYER that is not installed, say): found by a probe before
# the first parallel kernel runs, so that no step fails halfway through its
# parameters. Parallel kernels are then replaced by the serial ones.
_layer_failed = False

# GNU OpenMP cannot run in a child forked from a process that has started it:
# numba terminates the child (or, when another library started it, the
# child's parallel step hangs). ``_forked_from_gnu_omp`` is set in such a
# child (see ``_after_fork_in_child``), which then runs the serial kernels.
_forked_from_gnu_omp = False
_fork_warned = False


def kernel(name, target, p):
    """The ``name`` kernel ("sgd", "adagrad", "adam") to update parameter ``p``.

    ``target`` is None (a GPU array takes the CUDA kernel; a NumPy array the
    serial kernel below ``config.PARALLEL_THRESHOLD`` elements, from it
    whichever of the two ``_Timed`` found faster lately), "serial",
    "parallel" or "cuda"; callers have validated it against ``p`` with
    ``_checks.check_target_matches``.
    """
    if target is None:
        if not isinstance(p, np.ndarray):
            target = "cuda"
        elif _below_threshold(p):
            target = "serial"
        elif not _forked_from_gnu_omp:
            return _Timed.run(name, p)
        else:
            target = "parallel"
    if target == "cuda":
        from . import _cuda
        return _cuda.launcher(name)
    if target == "parallel":
        return _parallel(name)
    return KERNELS[name][target]


def settled(name, target, p):
    """The kernel ``kernel(name, target, p)`` gives, if that choice stays
    the same while ``config.PARALLEL_THRESHOLD`` does (a serial kernel,
    asked for or below the threshold); None if it may change from call to
    call (timed, or guarded, parallel kernels)."""
    if target == "serial" or (target is None and isinstance(p, np.ndarray)
                              and _below_threshold(p)):
        return KERNELS[name]["serial"]
    return None


def _below_threshold(p):
    """Whether host array ``p`` takes the serial kernel under ``target=None``:
    below ``config.PARALLEL_THRESHOLD``, or empty (nothing to time)."""
    return p.size < config.PARALLEL_THRESHOLD or p.size == 0


_DIRECT: dict = {}


def direct(fn, name, dtype):
    """``fn``, a kernel from ``kernel``, as numba's compiled function for
    ``name``'s arguments with ``dtype`` arrays, when it is a numba dispatcher
    that has one (else None: ``_Timed``'s and the guarded parallel calls).
    It skips the dispatcher's typing of every argument (about a microsecond
    and a half of a twenty-argument call) and checks none of them: callers
    must pass exactly those types, except that Python floats may stand for
    the scalars (converted to ``dtype`` as NumPy converts them). The
    dispatcher itself must be given scalars of ``dtype``: it would compile
    float64 code for Python floats."""
    key = (fn, name, dtype)
    compiled = _DIRECT.get(key)
    if compiled is None:
        overloads = getattr(fn, "overloads", None)
        if overloads is not None:
            from .kernels.spec import signature
            cres = overloads.get(signature(name, dtype))
            if cres is not None:
                compiled = _DIRECT[key] = cres.entry_point
    return compiled


def _parallel(name):
    """The parallel ``name`` kernel, or a stand-in with the same results
    where it cannot run: the serial kernel in a child forked from a process
    that used GNU OpenMP, one parallel call at a time under workqueue."""
    if _forked_from_gnu_omp:
        _warn_forked()
        return KERNELS[name]["serial"]
    if _layer_failed:
        return KERNELS[name]["serial"]
    if _layer_is_safe is not True:
        return lambda *args: _guarded_parallel(name, args)
    return KERNELS[name]["parallel"]


class _Timed:
    """Serial or parallel by measured time: ``target=None`` from the threshold up.

    The parallel kernel needs every core, and in a training loop other
    threads often hold them: OpenBLAS's workers keep spinning for tens of
    milliseconds after each matrix product, so a parallel step can wait
    milliseconds where the serial one takes tens of microseconds. So every
    such call is timed and, per kernel, itemsize and size class (a power of
    two), the kernel with the lower recent best time per element runs; the
    other one is tried again after ``FIRST`` calls, then after twice as many
    each time it loses again (up to ``LAST``); when the choice changes, after
    ``FIRST`` again. Each kernel's first call is not counted: it pays for
    what the next calls do not (a fresh state's first touch of its memory,
    the thread pool's start, loading the kernel), and counting it made a
    slower serial kernel win the first trial and run the next ``FIRST``
    steps. Both kernels give bit-identical results.
    """

    FIRST, LAST, KEEP = 16, 4096, 3
    _all: dict = {}
    __slots__ = ("serial", "parallel", "best", "count", "interval", "started")

    def __init__(self):
        self.serial = self.parallel = ()  # the last KEEP times per element, newest last
        self.started = ()  # the targets whose first call is done
        self.best = "parallel"
        self.count = 0
        self.interval = 1  # try serial on the second call

    @classmethod
    def run(cls, name, p):
        """The kernel to run on ``p``: the chosen one, timed."""
        key = (name, p.itemsize, p.size.bit_length())
        timed = cls._all.get(key) or cls._all.setdefault(key, cls())
        target, trial = timed.pick()
        fn = _parallel(name) if target == "parallel" else KERNELS[name]["serial"]
        n = p.size

        def call(*args):
            t0 = time.perf_counter()
            result = fn(*args)
            timed.record(target, (time.perf_counter() - t0) / n, trial)
            return result
        return call

    def pick(self):
        """The target to run next, and whether it is a trial of the slower one."""
        self.count += 1
        if self.count <= self.interval:
            return self.best, False
        self.count = 0
        return ("serial" if self.best == "parallel" else "parallel"), True

    def record(self, target, seconds, trial):
        """Note that ``target`` took ``seconds`` per element (``trial``: as a trial)."""
        if target not in self.started:
            self.started += (target,)
            return
        # Tuples are replaced whole: a thread reading one never sees it change.
        setattr(self, target, getattr(self, target)[1 - self.KEEP:] + (seconds,))
        if not (self.serial and self.parallel):
            return
        best = "parallel" if min(self.parallel) <= min(self.serial) else "serial"
        if best != self.best:
            self.best, self.interval, self.count = best, self.FIRST, 0
        elif trial:  # and lost
            self.interval = min(max(2 * self.interval, self.FIRST), self.LAST)


def _guarded_parallel(name, args):
    """Run the parallel kernel if no other thread is in one, else the serial
    kernel (bit-identical results), until the threading layer is known safe."""
    global _layer_is_safe
    if not _parallel_lock.acquire(blocking=False):
        return KERNELS[name]["serial"](*args)
    try:
        if _layer_is_safe is None and not _layer_loads():
            return KERNELS[name]["serial"](*args)
        result = KERNELS[name]["parallel"](*args)
        if _layer_is_safe is None:
            import numba
            _layer_is_safe = numba.threading_layer() != "workqueue"
            if not _layer_is_safe:
                warnings.warn("numba's workqueue threading layer is not thread-safe: fastopt runs "
                              "one parallel step at a time, and steps that other threads take "
                              "meanwhile use the serial kernel (same results). Install tbb, or "
                              "use the omp layer, for concurrent parallel steps.",
                              RuntimeWarning, stacklevel=_caller_level())
    finally:
        _parallel_lock.release()
    return result


def _layer_loads():
    """Whether numba's threading layer loads, tried once (under
    ``_parallel_lock``) on a one-element array before any parallel kernel
    writes; if it does not, warn and set ``_layer_failed``."""
    global _layer_failed
    try:
        KERNELS["any_nonfinite"]["parallel"](np.zeros(1, np.float32), np.float32(1))
    except ValueError as e:  # numba: "No threading layer could be loaded."
        _layer_failed = True
        warnings.warn(f"fastopt: numba's parallel kernels cannot run here ({str(e).splitlines()[0]}); "
                      "fastopt uses the serial kernels (same results). Check "
                      "NUMBA_THREADING_LAYER and that the layer it names is installed.",
                      RuntimeWarning, stacklevel=_caller_level())
        return False
    return True


def _uses_gnu_openmp():
    """Whether numba's threads are started, on the GNU OpenMP layer."""
    import numba
    try:
        if numba.threading_layer() != "omp":
            return False
    except ValueError:  # not started: the child may start it
        return False
    try:
        from numba.np.ufunc import omppool
        return omppool.openmp_vendor == "GNU"
    except (ImportError, AttributeError):
        return True


def _gnu_openmp_threads_may_run():
    """Whether GNU OpenMP threads that numba did not start may be running here
    (another library's, PyTorch's say): libgomp is loaded and the process has
    more than one thread. Conservative: a child forked now runs the serial
    kernels (same results), as numba's omp layer would hang there. Linux only
    (elsewhere: False)."""
    try:
        with open("/proc/self/maps") as f:
            if not any("libgomp" in line for line in f):
                return False
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1]) > 1
    except (OSError, ValueError, IndexError):
        pass
    return False


_parent_gnu_openmp = False  # set just before a fork: _gnu_openmp_threads_may_run() then


def _layer_may_be_omp():
    """Whether numba's threading layer is omp, or, not started yet, may be:
    "default", "threadsafe" and "omp" may pick it; "workqueue" and "tbb"
    do not, nor "safe" and "forksafe" (not GNU OpenMP, which is not fork-safe)."""
    import numba
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # not started
        return numba.config.THREADING_LAYER in ("default", "threadsafe", "omp")


def _before_fork():
    global _parent_gnu_openmp
    _parent_gnu_openmp = _gnu_openmp_threads_may_run() and _layer_may_be_omp()


def _after_fork_in_child():
    global _forked_from_gnu_omp, _fork_warned, _parallel_lock
    _parallel_lock = threading.Lock()  # another thread of the parent may have held it
    _forked_from_gnu_omp = _forked_from_gnu_omp or _uses_gnu_openmp() or _parent_gnu_openmp
    _fork_warned = False


def _warn_forked():
    global _fork_warned
    if not _fork_warned:
        _fork_warned = True
        warnings.warn("fastopt: this process was forked from one that ran GNU OpenMP threads "
                      "(numba's, or another library's such as PyTorch's), which numba's omp "
                      "layer cannot run beside here; parallel-sized steps use the serial "
                      "kernel (same results). Start processes with the 'spawn' or "
                      "'forkserver' method, or use the tbb or workqueue threading layer, "
                      "to keep them parallel.", RuntimeWarning, stacklevel=_caller_level())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
