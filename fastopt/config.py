"""Run-time settings, with environment-variable overrides.

``PARALLEL_THRESHOLD``
    Arrays with at least this many elements take the parallel (``prange``)
    kernel; smaller ones the serial kernel, which avoids the cost of waking
    the thread pool. See README, "Serial or parallel". Environment: ``FASTOPT_PARALLEL_THRESHOLD``.

``CUDA_THREADS_PER_BLOCK``
    Threads per block of the CUDA kernels (1 to 1024). Environment:
    ``FASTOPT_CUDA_THREADS_PER_BLOCK``.

``CUDA_MAX_BLOCKS``
    The most blocks a CUDA kernel launches; each thread loops over the
    elements a grid's width apart (a grid-stride loop), so any size is
    covered. 0 (the default) means 32 blocks per multiprocessor of the
    device. Environment: ``FASTOPT_CUDA_MAX_BLOCKS``.

Change a setting by assigning to it (``fastopt.config.PARALLEL_THRESHOLD = 0``);
``reset()`` restores the defaults and re-reads the environment.
"""

import os

_DEFAULTS = {
    # Measured with Adam.step() on float32 (AMD EPYC, 2 cores, 2026-11-28):
    # at 16,384 elements serial is faster (16 vs 19 us median), at 65,536
    # parallel is (29 vs 37 us). On a machine whose other cores are busy a
    # parallel step can wait milliseconds for a descheduled thread, so the
    # threshold sits at the size where parallel clearly wins, not below it.
    "PARALLEL_THRESHOLD": 65_536,
    # Not measured: no GPU was available when the CUDA target was written.
    # 256 threads and 32 blocks per multiprocessor are the usual starting
    # point for a grid-stride, bandwidth-bound loop (8 resident blocks per
    # SM, four waves, ~100 elements per thread for 1e8 elements on an H100).
    "CUDA_THREADS_PER_BLOCK": 256,
    "CUDA_MAX_BLOCKS": 0,
}

PARALLEL_THRESHOLD: int
CUDA_THREADS_PER_BLOCK: int
CUDA_MAX_BLOCKS: int


def _env_int(name, default, low=0, high=None):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"environment variable {name} must be {bounds}, got {value}")
    return value


def reset():
    """Restore every setting to its default, then apply environment overrides."""
    global PARALLEL_THRESHOLD, CUDA_THREADS_PER_BLOCK, CUDA_MAX_BLOCKS
    PARALLEL_THRESHOLD = _env_int("FASTOPT_PARALLEL_THRESHOLD", _DEFAULTS["PARALLEL_THRESHOLD"])
    CUDA_THREADS_PER_BLOCK = _env_int("FASTOPT_CUDA_THREADS_PER_BLOCK",
                                      _DEFAULTS["CUDA_THREADS_PER_BLOCK"], low=1, high=1024)
    CUDA_MAX_BLOCKS = _env_int("FASTOPT_CUDA_MAX_BLOCKS", _DEFAULTS["CUDA_MAX_BLOCKS"])


reset()
