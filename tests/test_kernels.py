"""The compiled loops vectorise and keep float32 in float32 (x86-64 assembly checks)."""

import platform
import re

import numpy as np
import pytest
from numba import njit

from fastopt.kernels import cpu

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="assembly patterns are x86-64's")

T32, T64 = np.float32, np.float64


def args(name, dtype):
    T = np.dtype(dtype).type
    a = [np.ones(64, dtype) for _ in range(5)]
    s = T(0.5)
    if name == "sgd":
        return (a[0], a[1], a[2], s, s, s, s, s, False, True, True, False, False)
    if name == "adagrad":
        return (a[0], a[1], a[2], s, s, s, s, False, True)
    return (a[0], a[1], a[2], a[3], a[4], s, s, False, s, s, s, s, s, s, s, s,
            False, True, False, True)


def assembly(name, target, dtype):
    """Assembly of a fresh, uncached compilation (cached code cannot be inspected)."""
    loop = cpu.KERNELS[name][target]
    options = {k: v for k, v in loop.targetoptions.items() if k != "nopython"}
    fresh = njit(**options)(loop.py_func)
    fresh(*args(name, dtype))
    return "\n".join(fresh.inspect_asm().values())


@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("dtype", [T32, T64], ids=["float32", "float64"])
def test_loop_vectorises_and_keeps_precision(name, target, dtype):
    asm = assembly(name, target, dtype)
    suffix = "ps" if dtype is T32 else "pd"
    op = "mul" if name == "sgd" else "sqrt"
    packed = re.findall(rf"\bv?{op}{suffix}\s+%[xyz]mm", asm)
    assert packed, f"no packed {op}{suffix}: the {target} {name} loop did not vectorise"
    if dtype is T32:
        # A float64 scalar in a float32 loop shows up as conversions to double.
        assert not re.search(r"\bv?cvt(ss2sd|ps2pd)\b", asm), "float32 loop converts to float64"
    # fastmath stays off: no fused multiply-add contraction.
    assert not re.search(r"\bvfn?m(add|sub)\d*[ps][sd]\b", asm), "unexpected FMA contraction"
