"""Run-time settings, with environment-variable overrides.

``PARALLEL_THRESHOLD``
    Arrays with at least this many elements take the parallel (``prange``)
    kernel; smaller ones the serial kernel, which avoids the cost of waking
    the thread pool. See README, "Serial or parallel". Environment: ``FASTOPT_PARALLEL_THRESHOLD``.

Change a setting by assigning to it (``fastopt.config.PARALLEL_THRESHOLD = 0``);
``reset()`` restores the defaults and re-reads the environment.
"""

import os

_DEFAULTS = {
    # Serial and parallel float32 Adam steps cost the same (~7 us) at about
    # this size on the project's 2-core machine (AMD EPYC, 2026-11); float64
    # and SGD cross over within a factor of two of it.
    "PARALLEL_THRESHOLD": 16_384,
}

PARALLEL_THRESHOLD: int


def _env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {value}")
    return value


def reset():
    """Restore every setting to its default, then apply environment overrides."""
    global PARALLEL_THRESHOLD
    PARALLEL_THRESHOLD = _env_int("FASTOPT_PARALLEL_THRESHOLD", _DEFAULTS["PARALLEL_THRESHOLD"])


reset()
