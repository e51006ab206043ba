"""Every script in examples/ runs in quick mode and reaches what it claims.

Each example ends its output with ``RESULT {json}`` and exits non-zero when
it misses its target; these tests run each one in a fresh process (as a
user would, with this checkout first on the path) and check both. An
example whose optional dependencies (the ``examples`` extra) are missing is
skipped.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script -> (modules it needs beyond fastopt, whether it takes --plot, check on its RESULT)
CASES = {
    "logistic_regression.py": (
        ["sklearn", "matplotlib"], True,
        lambda r: all(o["test_accuracy"] >= 0.95 and o["gap"] <= 0.02
                      for o in r["optimizers"].values()) and len(r["optimizers"]) == 3),
    "mlp_digits.py": (
        ["sklearn"], False,
        lambda r: r["test_accuracy"] >= 0.95 and r["optimizer_step_median_us"] > 0),
    "curve_fit.py": (
        ["scipy", "matplotlib"], True,
        lambda r: r["max_diff_in_stderr"] < 0.01 and abs(r["cost_relative_diff"]) < 1e-9),
    "large_vector.py": (
        ["tqdm"], False,
        lambda r: r["loss_reduction"] >= 10 and r["n"] == 1_000_000
        and r["gbps"] > 0 and r["roofline_gbps"] > 0),
    "torch_digits.py": (
        ["sklearn", "torch"], False,
        lambda r: r["gap"] <= 0.02 and all(o["test_accuracy"] >= 0.95 and o["step_median_us"] > 0
                                           for o in r["optimizers"].values())),
    "scipy_fit.py": (
        ["scipy"], False,
        lambda r: all(r["methods"][m]["success"] and r["methods"][m]["max_diff_in_se"] <= 0.01
                      for m in ("fastopt.scipy.adam", "fastopt.scipy.sgd"))
        and r["methods"]["BFGS"]["success"] and r["iteration_us_by_hand"] > 0),
    "optimizer_paths.py": (
        ["matplotlib"], True,
        lambda r: all(r["checks"].values()) and len(r["checks"]) == 4),
    "state_dtype_digits.py": (
        ["sklearn", "matplotlib"], True,
        lambda r: _state_dtype_rows_ok(r["rows"])),
    "bf16_params.py": (
        ["sklearn", "ml_dtypes"], False,
        lambda r: all(r["checks"].values()) and len(r["quality"]) == 10
        and r["speed"]["n"] == 100_000 and all(t > 0 for t in r["speed"]["ms"].values())),
    "zero_mlp.py": (
        ["sklearn", "mpi4py"], False,
        lambda r: r["test_accuracy"] >= 0.95 and r["ranks"] == 2 and r["identical_on_all_ranks"]
        and max(r["state_bytes_per_rank"]) * 2 == r["single_process_state_bytes"]),
}

def _state_dtype_rows_ok(rows):
    """Each state dtype trained, held fewer bytes than the one before, and float32
    state is its own reference path."""
    ours = {r["optimizer"]: r for r in rows if r["layout"] == "one tensor"
            and r["optimizer"].startswith("fastopt")}
    names = [n for n in ("float32", "bfloat16", "int8", "int4") if f"fastopt {n}" in ours]
    sizes = [ours[f"fastopt {n}"]["state_bytes_per_param"] for n in names]
    return (names[0] == "float32" and "int8" in names and "int4" in names
            and sizes == sorted(sizes, reverse=True) and sizes[0] == 8.0
            and ours["fastopt float32"]["deviation"] == [0.0]
            and all(0 < d < 1 for n in names[1:] for d in ours[f"fastopt {n}"]["deviation"]))


# Scripts run under a launcher: the mpich wheel's mpiexec (beside this Python), else PATH's.
_MPIEXEC = (str(Path(sys.executable).parent / "mpiexec")
            if (Path(sys.executable).parent / "mpiexec").exists() else shutil.which("mpiexec"))
LAUNCHERS = {"zero_mlp.py": [_MPIEXEC, "-n", "2"]}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_has_usage_docstring(script):
    text = (EXAMPLES / script).read_text()
    assert text.startswith('"""'), f"{script} has no module docstring"
    doc = text.split('"""')[1]
    for heading in ("What it shows", "How to run", "--quick", "RESULT"):
        assert heading in doc, f"{script}'s docstring lacks {heading!r}"


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_quick(script, tmp_path):
    modules, takes_plot, check = CASES[script]
    for module in modules:
        pytest.importorskip(module)
    launcher = LAUNCHERS.get(script, [])
    if launcher and launcher[0] is None:
        pytest.skip('needs mpiexec: pip install "fastopt[mpi]"')
    args = [*launcher, sys.executable, str(EXAMPLES / script), "--quick"]
    image = tmp_path / "plot.png"
    if takes_plot:
        args += ["--plot", str(image)]
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    out = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert out and out[-1].startswith("RESULT "), f"{script} printed no RESULT line:\n{proc.stdout}"
    result = json.loads(out[-1][len("RESULT "):])
    assert result["ok"] is True
    assert result["example"] == script[:-3]
    assert check(result), f"{script} missed its target: {result}"
    if takes_plot:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
