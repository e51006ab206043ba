"""Run-time settings, with environment-variable overrides.

Change a setting by assigning to it (``fastopt.config.PARALLEL_THRESHOLD = 0``);
the value is checked at once: an integer (Python or NumPy, not a bool) in the
setting's range, else TypeError or ValueError naming the setting, and the old
value stays. Assigning a name that is not a setting raises AttributeError.
``reset()`` restores the defaults and re-reads the environment.
"""

import operator
import os
import sys
import textwrap
import types
from typing import NamedTuple, Optional

import numpy as np


class _Setting(NamedTuple):
    name: str
    default: int
    low: int
    high: Optional[int]
    doc: str

    @property
    def env(self):
        return "FASTOPT_" + self.name

    def bounds(self):
        return f">= {self.low}" if self.high is None else f"between {self.low} and {self.high}"


# The one list of settings: the module docstring, reset() and the checks on
# assignment are all derived from it.
_SETTINGS = (
    # Measured with Adam.step() on float32 (2-core AMD EPYC, 2026-11-28): on
    # Zen 4 (AVX-512) serial wins at 16,384 elements (16 vs 19 us median) and
    # parallel at 65,536 (29 vs 37 us); on Zen 3 (AVX2), with vectorised serial
    # loops, float32 crosses between 32,768 and 65,536 (float64 earlier; README
    # "Serial or parallel"). A parallel step on a busy machine can wait
    # milliseconds for a descheduled thread, so the threshold sits where
    # parallel clearly wins; from it up, _dispatch times both kernels.
    _Setting("PARALLEL_THRESHOLD", 65_536, 0, None,
             "Arrays with fewer elements take the serial kernel, which avoids the cost "
             "of waking the thread pool; from this size up, the parallel (``prange``) "
             "kernel or the serial one, whichever was faster lately (timed). See "
             "README, \"Serial or parallel\"."),
    # Not measured: no GPU was available when the CUDA target was written.
    # 256 threads and 32 blocks per multiprocessor are the usual starting
    # point for a grid-stride, bandwidth-bound loop (8 resident blocks per
    # SM, four waves, ~100 elements per thread for 1e8 elements on an H100).
    _Setting("CUDA_THREADS_PER_BLOCK", 256, 1, 1024,
             "Threads per block of the CUDA kernels."),
    # 2**31 - 1 is CUDA's limit on a grid's x dimension.
    _Setting("CUDA_MAX_BLOCKS", 0, 0, 2**31 - 1,
             "The most blocks a CUDA kernel launches; each thread loops over the "
             "elements a grid's width apart (a grid-stride loop), so any size is "
             "covered. 0 means 32 blocks per multiprocessor of the device."),
)
_BY_NAME = {s.name: s for s in _SETTINGS}

__doc__ += "".join(
    f"\n``{s.name}``\n" + textwrap.fill(
        f"{s.doc} Range: {s.bounds()}; default {s.default}. Environment: ``{s.env}``.",
        width=76, initial_indent="    ", subsequent_indent="    ") + "\n"
    for s in _SETTINGS)

PARALLEL_THRESHOLD: int
CUDA_THREADS_PER_BLOCK: int
CUDA_MAX_BLOCKS: int


def _checked(setting, value, label):
    """``value`` as a Python int if it is an integer in ``setting``'s range."""
    # np.bool_ too: before NumPy 2.3, operator.index takes it as 0 or 1.
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{label} must be an integer, got a bool ({value!r})")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{label} must be an integer, got {type(value).__name__} "
                        f"({value!r})") from None
    if number < setting.low or (setting.high is not None and number > setting.high):
        raise ValueError(f"{label} must be {setting.bounds()}, got {number}")
    return int(number)


def _from_environment(setting):
    raw = os.environ.get(setting.env)
    if raw is None or raw.strip() == "":
        return setting.default
    label = f"environment variable {setting.env}"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{label} must be an integer, got {raw!r}") from None
    return _checked(setting, value, label)


class _ConfigModule(types.ModuleType):
    """This module's class: assignments to settings are checked, reads are
    plain module-attribute reads (a setting is read on every step)."""

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            setting = _BY_NAME.get(name)
            if setting is None:
                raise AttributeError(f"fastopt.config has no setting {name!r}; "
                                     f"the settings are {', '.join(_BY_NAME)}")
            value = _checked(setting, value, f"fastopt.config.{name}")
        super().__setattr__(name, value)

    def __delattr__(self, name):
        if name in _BY_NAME:
            raise AttributeError(f"fastopt.config.{name} cannot be deleted; "
                                 f"use fastopt.config.reset() to restore the default")
        super().__delattr__(name)


def reset():
    """Restore every setting to its default, then apply environment overrides.

    Every environment variable is checked before any setting changes: if one
    is invalid, ValueError names it and the settings stay as they were.
    """
    values = {s.name: _from_environment(s) for s in _SETTINGS}
    globals().update(values)


sys.modules[__name__].__class__ = _ConfigModule
reset()
