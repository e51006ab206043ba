"""The bench's plausibility checks and report, on synthetic timings (nothing is timed here).

The figures below are the kinds a busy machine produced: "823.68x" against
torch, "200% of roofline", every parallel row at 8.0 ms, and no crossover.
"""

import json

import pytest

from fastopt.bench import format_table, noise, reporting
from fastopt.bench.measure import check_rows
from fastopt.bench.reporting import COLUMNS, noise_summary, report

MACHINE = {"processor": "test CPU", "cores": 2, "numba_threads": 2, "threading_layer": "omp",
           "numpy": "x", "numba": "y", "parallel_threshold": 65536}
STEADY = [1.0e-3, 1.01e-3, 0.99e-3, 1.0e-3, 1.02e-3]


def row(optimizer="adam", n=1_000_000, ms=1.0, roofline_pct=90.0, speedup_torch=1.1, **extra):
    r = {"optimizer": optimizer, "n": n, "dtype": "float32", "target": "parallel",
         "fastopt_ms": ms, "gbps": 28 * n / ms / 1e6, "roofline_ms": ms * roofline_pct / 100,
         "roofline_pct": roofline_pct, "numpy_ms": 10 * ms, "speedup_numpy": 10.0,
         "torch_ms": ms * speedup_torch, "speedup_torch": speedup_torch}
    r.update(extra)
    return r


def results(rows, threshold=None, load=(0.5, 0.6), **extra):
    out = {"machine": MACHINE, "rows": rows, "many": None, "guards": None, "startup": None,
           "threshold": threshold, "gpu": None, "cuda_rows": [],
           "noise": {"load_before": load[0], "load_after": load[1]}}
    out.update(extra)
    out["noise"] = noise_summary(out)
    return out


def test_a_steady_plausible_row_passes():
    r = noise.check_row(row(), {"fastopt": STEADY, "roofline": STEADY})
    assert "flags" not in r and r["spread_pct"]["fastopt"] < 5
    text = report(results([r]))
    assert "?" not in text and "plausibility" not in text and "WARNING" not in text


@pytest.mark.parametrize("pct,doubted", [(200.0, True), (109.0, False), (100.0, False)])
def test_above_the_roofline_is_marked(pct, doubted):
    r = noise.check_row(row(roofline_pct=pct))
    assert ("roofline" in r.get("flags", ())) == doubted
    table = format_table([r], COLUMNS)
    assert (f"{pct:.0f}%?" in table) == doubted
    if doubted:
        assert "impossible" in report(results([r]))


@pytest.mark.parametrize("ratio", [823.68, 0.01])
def test_absurd_ratio_is_marked(ratio):
    r = noise.check_row(row(speedup_torch=ratio))
    assert r["flags"] == ["ratio"] and "speedup_torch" in r["suspect"]
    assert f"{ratio:.2f}x?" in format_table([r], COLUMNS)
    res = results([r])
    assert any("speedup_torch" in w for w in res["noise"]["warnings"])
    assert json.loads(json.dumps(res))["rows"][0]["flags"] == ["ratio"]


def test_spread_between_rounds_doubts_the_figures_of_that_contender():
    torch_rounds = [1e-3, 1e-3, 5e-3, 9e-3, 1e-3]
    r = noise.check_row(row(), {"fastopt": STEADY, "torch": torch_rounds},
                        {"fastopt": ("fastopt_ms",), "torch": ("torch_ms", "speedup_torch")})
    assert r["flags"] == ["spread"] and r["suspect"] == ["torch_ms", "speedup_torch"]
    assert r["spread_pct"]["torch"] > 100 and "varied between rounds" in r["warnings"][0]
    assert "torch 400%" in r["warnings"][0] and "fastopt" not in r["warnings"][0]


def test_spread():
    assert noise.spread([1.0]) == 0.0
    assert noise.spread([2.0, 2.0, 2.0]) == 0.0
    assert noise.spread([1.0, 2.0, 3.0]) == pytest.approx(0.5)


def test_rows_of_different_work_with_the_same_time_are_quantised():
    variants = ["sgd", "adagrad", "adam", "adam-amsgrad"]
    rows = [row(v, n, ms=8.0) for n in (1_000_000, 10_000_000) for v in variants]
    rows.append(row("adam", 10_000, ms=0.014))
    flagged = check_rows(rows)
    assert len(flagged) == 8
    assert all("same-time" in r["flags"] and "fastopt_ms" in r["suspect"] for r in rows[:8])
    assert "flags" not in rows[-1]
    assert "8.000?" in format_table(rows, COLUMNS)


def test_same_time_is_fine_below_a_millisecond_or_for_the_same_work():
    small = [row(v, 10_000, ms=0.014) for v in ("sgd", "adagrad", "adam", "adam-amsgrad")]
    same_work = [row("adam", 1_000_000, ms=5.0), row("adamw", 1_000_000, ms=5.0),
                 row("adam", 1_000_000, ms=5.01)]
    assert check_rows(small) == [] and check_rows(same_work) == []


def _threshold(parallel_us):
    sizes = [2 ** k for k in range(10, 21)]
    return [{"n": n, "serial_us": n / 1000, "parallel_us": p} for n, p in zip(sizes, parallel_us)]


def test_no_crossover_never_prints_none():
    th = {"dtype": "float32", "rows": _threshold([8000.0] * 11), "crossover": None}
    for key in ("serial_us", "parallel_us"):
        noise.check_same_times(th["rows"], key, lambda r: r["n"], floor=1000.0)
    res = results([row()], threshold=th)
    text = report(res)
    assert "None" not in text
    assert "did not win at the largest size here (n = 1,048,576)" in text
    assert "8000.0?" in text  # every parallel row at 8 ms: the scheduler's
    assert any(w.startswith("threshold:") for w in res["noise"]["warnings"])


def test_crossover_is_printed_as_a_size():
    th = {"dtype": "float32", "rows": _threshold([2.0] * 11), "crossover": 65536}
    text = report(results([row()], threshold=th))
    assert "parallel wins from n = 65,536 on" in text and "None" not in text


def test_a_busy_machine_is_said_in_the_report_and_the_json():
    assert noise.busy(0.5, 1.0, 2) is None and noise.busy(None, None, 2) is None
    res = results([row()], load=(1.9, 7.2))
    assert "7.2 on 2 cores" in res["noise"]["busy"] and res["noise"]["warnings"][0] == res["noise"]["busy"]
    assert report(res).startswith("WARNING: the machine was busy")


def test_many_and_guards_are_checked_too():
    many = noise.check_row({"tensors": 2000, "size": 5000, "dtype": "float32", "flat_ms": 5.0,
                            "separate_ms": 19.0, "roofline_ms": 10.0, "roofline_pct": 200.0,
                            "torch_ms": 4000.0, "speedup_torch": 800.0})
    guards = {"n": 10_000_000, "dtype": "float32", "plain_ms": 48.0, "check_finite_ms": 20.0,
              "check_finite_scaled_ms": 21.0, "check_finite_cost_pct": -58.0}
    noise.check_guard_cost(guards)
    res = results([row()], many=many, guards=guards)
    text = report(res)
    assert "200%? of roofline" in text and "800.0x?" in text and "(-58%?)" in text
    assert sum("2,000 tensors of 5,000" in w for w in res["noise"]["warnings"]) == 2
    assert reporting.label(guards) in " ".join(res["noise"]["warnings"])


@pytest.mark.parametrize("cost,plain_ms,doubted", [(18.0, 48.0, False), (-58.0, 48.0, True),
                                                  (3790.0, 0.5, False), (3790.0, 2.0, True)])
def test_guard_cost_must_be_what_one_more_read_can_cost(cost, plain_ms, doubted):
    r = noise.check_guard_cost({"plain_ms": plain_ms, "check_finite_cost_pct": cost})
    assert ("guard-cost" in r.get("flags", ())) == doubted


def test_a_size_far_slower_than_its_neighbour_is_doubted():
    # the threshold run's parallel column on a busy machine: 2x the work, 67x the time
    th = _threshold([37.6, 36.4, 41.1, 39.6, 41.4, 50.2, 72.2, 119.8, 237.4, 15868.3, 11869.4])
    flagged = noise.check_scaling(th, "parallel_us", lambda r: r["n"], floor=1000.0)
    assert [r["n"] for r in flagged] == [524288]
    assert "15868.3?" in format_table(th, reporting.THRESHOLD_COLUMNS)
    # below the floor, per-call costs make small sizes cost the same: not doubted
    assert noise.check_scaling(_threshold([30.0] * 11), "parallel_us", lambda r: r["n"],
                               floor=1000.0) == []


def test_table_rows_scale_with_their_size():
    steady = [row("adam", 10_000, ms=0.014), row("adam", 1_000_000, ms=0.43),
              row("adam", 10_000_000, ms=6.8)]
    assert check_rows(steady) == []
    held = [row("adam", 10_000, ms=0.014), row("adam", 1_000_000, ms=24.0),
            row("adam", 10_000_000, ms=32.0)]
    assert check_rows(held) == [held[1]] and "scaling" in held[1]["flags"]
