"""The bench command runs and reports honestly; a step allocates nothing that grows with n."""

import json
import tracemalloc

import numpy as np
import pytest

import fastopt
from fastopt import bench


@pytest.mark.parametrize("variant", list(bench.VARIANTS))
def test_numpy_baseline_is_a_correct_implementation(variant):
    """The baseline the bench compares against computes the same update."""
    cls, hp, _ = bench.VARIANTS[variant]
    hp = {k: v for k, v in hp.items() if k != "state_dtype"}  # the rule, in full precision
    rng = np.random.default_rng(0)
    p = rng.standard_normal(100)
    ours, base, state = p.copy(), p.copy(), {}
    opt = cls([ours], **hp)
    for t in range(1, 4):
        g = rng.standard_normal(100)
        opt.step([g])
        bench.numpy_step(variant, base, g, state, t)
    np.testing.assert_allclose(base, ours, rtol=1e-12, atol=1e-12)


def test_bytes_per_step_matches_perf_table():
    # docs/measuring.md: f32 bytes per element 12, 20, 20, 28, 28, 36
    assert [bench.bytes_per_step(v, 1, np.float32) for v in bench.VARIANTS] \
        == [12, 20, 20, 28, 28, 36, 20, 16, 14]
    # Reduced-precision state (with the absmax) per parameter, against the limits.
    from fastopt.bench.cases import state_bytes_per_param
    assert [state_bytes_per_param(v, np.float32) for v in ("adam", "adam-bf16")] == [8, 4]
    assert state_bytes_per_param("adam-int8", np.float32) <= 2.04
    assert state_bytes_per_param("adam-int4", np.float32) <= 1.07


def test_block_wise_rows_below_their_size_are_not_measured():
    # Below 4,096 elements int8/int4 state is float32: such a row is the adam
    # row under another name, and its byte counts would be wrong.
    from fastopt.bench.cases import unavailable
    assert "float32 state" in unavailable("adam-int8", np.float32, 4095)
    assert "float32 state" in unavailable("adam-int4", np.float32, 1000)
    assert unavailable("adam-int8", np.float32, 4096) is None
    assert unavailable("adam", np.float32, 10) is None


def test_the_roofline_line_moves_the_roofline_kernels_bytes():
    from fastopt.bench.cases import roofline_bytes
    assert [roofline_bytes(v, 1, np.float32) for v in ("adam", "adam-bf16", "adam-int8")] \
        == [28, 20, 12]


@pytest.mark.parametrize("n,target", [(10_000, "serial"), (100_000, "parallel")])
def test_a_row_steps_on_the_target_it_is_labelled_with(n, target):
    # target=None times both kernels and may run the serial one on a busy
    # machine, while the row and its roofline say parallel
    step, _ = bench.make_step("sgd", n, np.float32)
    opt, = [c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, fastopt.SGD)]
    assert opt.target == bench.cases.target_for(n) == target


def test_sizes_beyond_memory_are_refused_before_measuring(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--sizes", "1000,1e11", "--no-torch"])
    assert e.value.code == 2
    assert "GiB" in capsys.readouterr().err


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--sizes", "1000", "--optimizers", "sgd,adam", "--no-torch",
                       "--skip-many", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ms/step" in text and "% roofline" in text and "None" not in text
    results = json.loads(out.read_text())
    assert [r["optimizer"] for r in results["rows"]] == ["sgd", "adam"]
    for row in results["rows"]:
        assert row["fastopt_ms"] > 0 and row["roofline_ms"] > 0 and row["numpy_ms"] > 0
        assert set(row["spread_pct"]) == {"fastopt", "roofline"}
    assert set(results["noise"]) >= {"load_before", "load_after", "cores", "busy", "warnings"}
    assert results["startup"]["first_step_ms"] > 0


def test_bench_rejects_unknown_optimizer():
    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "rmsprop"])


@pytest.mark.parametrize("argv, words", [
    (["--sizes", "inf"], "'inf' is not a whole number"),
    (["--sizes", "1e400"], "not a whole number"),
    (["--sizes", "1.7"], "not a whole number"),
    (["--sizes", "1e4,abc"], "'abc' is not a number"),
    (["--sizes", "0"], "between 1 and"),
    (["--json", "/nonexistent-folder/r.json"], "does not exist"),
    (["--plot", "."], "is a folder"),
    # (root may write anywhere by the permission bits: /proc still refuses,
    # and the run failed at its end, its results lost)
    (["--json", "/proc/fastopt-bench.json"], "cannot be written"),
])
def test_bad_arguments_are_usage_errors_before_any_measurement(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        bench.main(["--plot", str(tmp_path / "p.png")])
    assert e.value.code == 2 and "needs matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("module, argv, words", [
    ("fastopt", ["warmup", "junk"], "unrecognized arguments"),
    ("fastopt.bench.zero", ["--repeats", "0"], "--repeats"),
    ("fastopt.bench.zero", ["--size", "-5"], "--size"),
    ("fastopt.bench.torch_loop", ["--threads", "-1"], "--threads"),
])
def test_other_commands_refuse_bad_arguments(module, argv, words):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, \
        out.stderr


def test_torch_loop_output_leaves_json_on_stdout_alone(monkeypatch, capsys):
    """With --json -, what the torch loop prints goes to stderr."""
    from fastopt.bench import cli
    said = []
    monkeypatch.setattr(cli, "run", lambda args: {"rows": [], "machine": None})
    monkeypatch.setattr(cli, "torch_loop", lambda quick, device, out=None: said.append(out) or 0)
    assert cli.main(["--json", "-", "--torch-loop", "--sizes", "1000"]) == 0
    json.loads(capsys.readouterr().out)
    import sys
    assert said == [sys.stderr]


def test_many_tensors_case_runs():
    r = bench.measure_many(10, 100, "float32", rounds=2)
    assert r["flat_ms"] > 0 and r["separate_ms"] > 0 and "torch_ms" not in r


def test_torch_child_process_takes_turns():
    pytest.importorskip("torch")
    torch = bench.TorchChild(threads=1)
    try:
        assert torch.version
        row = bench.measure("adam", 1000, "float32", 2, 1, torch)
        assert row["torch_ms"] > 0 and row["speedup_torch"] > 0
        many = bench.measure_many(4, 100, "float32", 2, torch)
        assert many["torch_ms"] > 0
    finally:
        torch.close()


def test_bitsandbytes_row_beside_int8(capsys):
    """The adam-int8 rows get bitsandbytes' 8-bit AdamW as contender, timed in its
    child process in turn with fastopt."""
    pytest.importorskip("bitsandbytes")
    results = bench.run(bench.cli.parser().parse_args(
        ["--sizes", "5000", "--optimizers", "adam,adam-int8", "--no-torch", "--skip-many",
         "--no-progress", "--quick"]))
    assert results["bitsandbytes"] == {"version": None, "skipped": "--no-torch"}
    assert "bitsandbytes AdamW8bit (CPU): skipped (--no-torch)" in bench.report(results)
    bnb = bench.BitsandbytesChild(threads=1)
    try:
        assert bnb.version
        row = bench.measure("adam-int8", 5000, "float32", 2, 1, bnb=bnb)
        assert row["bnb_ms"] > 0 and row["speedup_bnb"] > 0
        assert set(row["spread_pct"]) == {"fastopt", "roofline", "bitsandbytes"}
        assert "bnb_ms" not in bench.measure("adam", 5000, "float32", 2, 1, bnb=bnb)
    finally:
        bnb.close()


def test_bitsandbytes_skipped_when_missing(monkeypatch, capsys):
    """Without bitsandbytes the adam-int8 rows are measured all the same, and the
    report says the contender was skipped."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    assert bench.main(["--sizes", "5000", "--optimizers", "adam-int8", "--skip-many",
                       "--no-progress", "--quick"]) == 0
    captured = capsys.readouterr()
    assert "bitsandbytes AdamW8bit rows skipped: bitsandbytes is not installed" in captured.err
    assert "bitsandbytes AdamW8bit (CPU): skipped (bitsandbytes is not installed)" in captured.out
    assert "adam-int8" in captured.out


def test_interleaved_ratio():
    times = bench.interleaved({"a": lambda: None, "b": lambda: sum(range(2000))}, rounds=3)
    assert len(times["a"]) == len(times["b"]) == 3
    assert bench.ratio(times, "b", "a") > 1


def test_interleaved_rotates_who_goes_first(monkeypatch):
    from fastopt.bench import timing
    seen = []
    monkeypatch.setattr(timing, "block", lambda fn, calls: seen.append(fn()) or 1.0)
    times = bench.interleaved({"a": lambda: "a", "b": lambda: "b", "c": lambda: "c"}, rounds=4)
    assert "".join(seen) == "abc" "bca" "cab" "abc"
    assert times == {"a": [1.0] * 4, "b": [1.0] * 4, "c": [1.0] * 4}


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [bench.measure("adam", n, "float32", 2, 1) for n in (1000, 2000)]
    assert all("torch_ms" not in r for r in rows)
    bench.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("cls,kw", [(fastopt.SGD, dict(momentum=0.9)), (fastopt.Adagrad, {}),
                                    (fastopt.Adam, dict(amsgrad=True))])
@pytest.mark.parametrize("target", ["serial", "parallel"])
def test_step_allocates_nothing_that_grows_with_n(cls, kw, target):
    n = 1_000_000
    p, g = np.zeros(n, np.float32), np.ones(n, np.float32)
    opt = cls([p], target=target, **kw)
    opt.step([g])  # state is created on the first step
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step([g])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"a step allocated {peak} bytes"


def test_torch_loop_rows(capfd):
    """``--torch-loop`` runs the PyTorch-loop rows in a child process (or says
    it needs PyTorch)."""
    assert bench.main(["--sizes", "1000", "--optimizers", "sgd", "--no-torch", "--skip-many",
                       "--no-progress", "--quick", "--torch-loop"]) == 0
    out = capfd.readouterr().out
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "needs PyTorch" in out
        return
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert set(result["rows"]) == {"many", "one", "clip"}
    assert all(v > 0 for row in result["rows"].values() for k, v in row.items()
               if k.endswith(("fused", "plain", "clip")) and isinstance(v, float))


def test_torch_loop_on_cuda_without_a_gpu_is_skipped(monkeypatch):
    import importlib.util
    import io
    from fastopt.bench import cli
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch installed (else it is skipped for that)")
    monkeypatch.setattr(cli, "cuda_device", lambda: (None, "no CUDA GPU here"))
    out = io.StringIO()
    assert cli.torch_loop(True, "cuda", out) == 0
    assert "skipped on CUDA: no CUDA GPU here" in out.getvalue()
