"""``target=None`` from the parallel threshold up: serial or parallel by
measured time (``_dispatch._Timed``), same results either way."""

import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch
from fastopt._interference import step_between_matmuls
from fastopt.kernels.cpu import KERNELS
from test_robustness import _available_layers


@pytest.fixture
def fresh_timings(monkeypatch):
    monkeypatch.setattr(_dispatch._Timed, "_all", {})
    fastopt.config.PARALLEL_THRESHOLD = 1_000
    return _dispatch._Timed._all


def targets(timed, calls):
    """The targets ``timed`` picks in ``calls`` calls, each recorded as taking
    1 (serial) or ``parallel`` time units."""
    out = []
    for _ in range(calls):
        target, trial = timed.pick()
        timed.record(target, timed.cost[target], trial)
        out.append(target[0])
    return "".join(out)


class Costed(_dispatch._Timed):
    __slots__ = ("cost",)


def test_first_calls_try_both_then_the_faster_runs():
    t = Costed()
    t.cost = {"serial": 2.0, "parallel": 1.0}
    assert targets(t, 2) == "ps"  # each one's first call: not counted
    assert t.serial == t.parallel == ()
    assert targets(t, 2) == "ps"  # counted: serial loses
    picks = targets(t, 16 + 1 + 32 + 1 + 64 + 1)
    # serial is tried again after 16, then 32, then 64 calls
    assert [i for i, c in enumerate(picks) if c == "s"] == [16, 16 + 33, 16 + 33 + 65]


def test_a_slow_first_call_does_not_decide():
    """The first call of each kernel pays for a fresh state's first touch
    of memory (and the thread pool's start): not counted."""
    t = Costed()
    t.cost = {"serial": 2.0, "parallel": 50.0}
    assert targets(t, 1) == "p"
    t.cost["parallel"] = 1.0
    assert targets(t, 3 + 16) == "sps" + "p" * 16


def test_choice_follows_a_change_in_cost():
    t = Costed()
    t.cost = {"serial": 2.0, "parallel": 1.0}
    targets(t, 500)
    t.cost["parallel"] = 100.0  # its cores are now taken
    picks = targets(t, 200)
    assert "s" in picks[:4]  # once the last three parallel calls were slow
    assert picks[4:].count("p") <= 4  # then only trials: after 16, 32, 64, 128 calls
    t.cost["parallel"] = 1.0  # free again
    picks = targets(t, 400)
    assert picks[-100:].count("s") <= 3


def test_one_slow_call_does_not_change_the_choice():
    t = Costed()
    t.cost = {"serial": 2.0, "parallel": 1.0}
    targets(t, 20)
    t.record("parallel", 1e6, False)
    assert t.best == "parallel"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auto_steps_equal_serial_steps_whichever_kernel_ran(fresh_timings, dtype):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(3_001).astype(dtype)
    grads = [rng.standard_normal(p0.size).astype(dtype) for _ in range(60)]
    auto, serial = p0.copy(), p0.copy()
    opt_auto = fastopt.Adam([auto], lr=1e-2, weight_decay=0.1)
    opt_serial = fastopt.Adam([serial], lr=1e-2, weight_decay=0.1, target="serial")
    for g in grads:
        opt_auto.step([g], check_finite=True)
        opt_serial.step([g], check_finite=True)
    np.testing.assert_array_equal(auto, serial)
    timed = fresh_timings[("adam", np.dtype(dtype).itemsize, p0.size.bit_length())]
    assert timed.serial and timed.parallel  # both ran


@pytest.mark.parametrize("slow_target", ["serial", "parallel"])
def test_a_kernel_that_waits_is_seldom_run(fresh_timings, monkeypatch, slow_target):
    """With a clock on which ``slow_target`` takes 100 times longer."""
    clock = [0.0]
    calls = {"serial": 0, "parallel": 0}

    def costed(target):
        fn = KERNELS["sgd"][target]

        def run(*args):
            calls[target] += 1
            clock[0] += 100.0 if target == slow_target else 1.0
            return fn(*args)
        return run
    for target in calls:
        monkeypatch.setitem(KERNELS["sgd"], target, costed(target))
    monkeypatch.setattr(_dispatch, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(_dispatch, "_layer_is_safe", True)
    p = np.zeros(2_000)
    opt = fastopt.SGD([p], lr=0.5)
    for _ in range(150):
        opt.step([np.ones_like(p)])
    # its first call (not counted), its second, then trials after 16, 32 and 64 calls
    assert calls[slow_target] == 5
    assert sum(calls.values()) == 150
    np.testing.assert_array_equal(p, -75.0)


def test_explicit_targets_are_not_timed(fresh_timings):
    p = np.zeros(2_000)
    for target in ("serial", "parallel"):
        fastopt.SGD([p], lr=0.1, target=target).step([np.ones_like(p)])
    fastopt.config.PARALLEL_THRESHOLD = 10**6
    fastopt.SGD([p], lr=0.1).step([np.ones_like(p)])
    assert fresh_timings == {}


def test_step_between_matmuls_reports_both_times():
    r = step_between_matmuls(1_000, steps=3, rounds=1, pause=0.0)
    assert r["isolated_us"] > 0 and r["between_us"] > 0 and r["ratio"] > 0


def _steps_of_empty_and_nonempty(kind):
    """A step over [a, empty, b] by ``kind``: a and b must both be stepped."""
    a, e, b = (np.ones(n, np.float32) for n in (5, 0, 5))
    grads = [np.ones(5, np.float32), np.ones(0, np.float32), np.ones(5, np.float32)]
    if kind == "functional":
        for p, g in zip((a, e, b), grads):
            fastopt.functional.sgd(p, g, lr=0.5)
    else:
        opt = (fastopt.SGD if kind == "sgd" else fastopt.Adam)([a, e, b], lr=0.5)
        opt.step(grads, **({"max_grad_norm": 1e9, "check_finite": True} if kind == "clip" else {}))
    return a, b


@pytest.mark.parametrize("kind", ["sgd", "adam", "clip", "functional"])
def test_an_empty_parameter_at_threshold_zero_takes_the_serial_kernel(kind):
    # From the threshold up, target=None times each call per element: an
    # empty array has nothing to time (it divided by zero after the step had
    # written the parameters before it).
    fastopt.config.PARALLEL_THRESHOLD = 0
    a, b = _steps_of_empty_and_nonempty(kind)
    assert a[0] == b[0] < 1


def test_a_threading_layer_that_cannot_load_falls_back_to_serial_before_any_write():
    # A layer named by NUMBA_THREADING_LAYER but not installed failed every
    # parallel launch, after the step had written the parameters before it.
    if "tbb" in _available_layers():
        pytest.skip("tbb is installed here: its layer loads")
    code = textwrap.dedent("""
        import warnings
        import numpy as np, fastopt
        a, b = np.ones(10, np.float32), np.ones(100_000, np.float32)
        opt = fastopt.Adam([a, b], lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                opt.step([np.ones(10, np.float32), np.ones(100_000, np.float32)])
        print(a[0] == b[0], opt.state[1]["step"], sum("cannot run here" in str(w.message) for w in caught))
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "tbb"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "3", "1"]


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--rounds", "0"], ["--sizes", "-5"],
                                  ["--sizes", "1.5"]])
def test_the_interference_command_refuses_bad_counts(argv, capsys):
    from fastopt._interference import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "whole number" in capsys.readouterr().err
