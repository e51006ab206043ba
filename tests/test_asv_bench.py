"""The asv suite's own pieces (asv_bench/benchmarks/common.py) mean what they say.

The suite is run by asv, not by pytest (CI smoke-runs it with ``asv run
--quick``); these checks are about its definitions: its NumPy baseline
computes the same step as fastopt, its byte counts are those of
docs/measuring.md, its size settings parse, and its serial-path benchmarks
match the bench's serial rows.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from fastopt import bench

COMMON = Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks" / "common.py"


def _load_common():
    spec = importlib.util.spec_from_file_location("fastopt_asv_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


@pytest.mark.parametrize("variant", common.VARIANT_NAMES)
def test_numpy_baseline_does_the_functional_step(variant):
    ours, base = common.Case(variant, "float64", 1001), common.Case(variant, "float64", 1001)
    step_ours, step_base = ours.functional_step("serial"), base.numpy_step()
    for _ in range(3):
        step_ours()
        step_base()
    np.testing.assert_allclose(base.p, ours.p, rtol=1e-12, atol=1e-12)
    for a, b in zip(base.state, ours.state):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("variant", common.VARIANT_NAMES)
def test_class_step_runs(variant):
    case = common.Case(variant, "float32", 100)
    before = case.p.copy()
    case.class_step("serial")()
    assert not np.array_equal(before, case.p)


def test_bytes_per_step_agree_with_fastopt_bench():
    for variant in common.VARIANT_NAMES:
        name = "sgd-momentum" if variant == "sgd-nesterov" else variant
        assert common.bytes_per_step(variant, 10, "float32") == bench.bytes_per_step(name, 10, np.float32)


def test_roofline_step_runs():
    fn = common.roofline_step(3, "float32", 100, "serial")
    fn()


def test_sizes_from_the_environment(monkeypatch):
    monkeypatch.delenv("FASTOPT_ASV_SIZES", raising=False)
    monkeypatch.delenv("FASTOPT_ASV_LARGE", raising=False)
    assert common._sizes() == list(common.DEFAULT_SIZES)
    monkeypatch.setenv("FASTOPT_ASV_SIZES", "1e3, 2000")
    assert common._sizes() == [1000, 2000]
    monkeypatch.setenv("FASTOPT_ASV_LARGE", "1")
    assert common._sizes() == [1000, 2000, 100_000_000]
    monkeypatch.setenv("FASTOPT_ASV_SIZES", "1e3,1e3,1e8")
    assert common._sizes() == [1000, 100_000_000]  # each once


@pytest.mark.parametrize("name,value", [
    ("FASTOPT_ASV_SIZES", "1.7"), ("FASTOPT_ASV_SIZES", "0"), ("FASTOPT_ASV_SIZES", "-5"),
    ("FASTOPT_ASV_SIZES", "1e3,,1e4"), ("FASTOPT_ASV_SIZES", "ten"),
    ("FASTOPT_ASV_LARGE", "false"), ("FASTOPT_ASV_LARGE", "yes"),
])
def test_bad_sizes_from_the_environment_are_refused(monkeypatch, name, value):
    # (1.7 was truncated to 1, and "false" turned the 5 GB sizes on)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        common._sizes()


def test_cuda_target_skips_without_a_gpu():
    assert common.require_target("serial") is None
    if common._DRIVER_FOUND:
        pytest.skip("an NVIDIA driver is installed here")
    with pytest.raises(NotImplementedError):
        common.require_target("cuda")
    with pytest.raises(NotImplementedError):
        common.Case("adam", "float32", 10, target="cuda")


def test_serial_path_benchmarks_match_the_bench_rows(monkeypatch):
    assert all(n in bench.FULL_SIZES and n in bench.QUICK_SIZES for n in common.SERIAL_SIZES)
    monkeypatch.syspath_prepend(str(COMMON.parents[1]))
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    from benchmarks.bench_bandwidth import SerialPath
    params = ("adam", "float32", common.SERIAL_SIZES[0])
    b = SerialPath()
    b.setup(*params)
    b.time_step(*params)
    assert b.track_gbps(*params) > 0 and b.track_roofline_pct(*params) > 0
