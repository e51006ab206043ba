"""fastopt.distributed: the ZeroOptimizer under ``mpiexec -n 1, 2, 3``.

The checks themselves are in ``zero_mpi_checks.py``, run on every rank by
``mpiexec`` in a subprocess (one per rank count, with a timeout, so that a
hang fails the test instead of stalling the suite). They skip, saying why,
where mpi4py or ``mpiexec`` is missing (``pip install "fastopt[mpi]"``).
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.distributed import shard_bounds

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "zero_mpi_checks.py"
TIMEOUT_S = 120


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason='needs mpi4py and mpiexec: pip install "fastopt[mpi]" (mpi4py and the mpich wheel)')


def run_ranks(n, *args, cwd):
    """``mpiexec -n n python zero_mpi_checks.py *args``; fails on a non-zero
    exit or a timeout (the whole process group is killed)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, str(SCRIPT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} hung (> {TIMEOUT_S} s):\n{out}")
    assert proc.returncode == 0 and "FAIL" not in out, (
        f"mpiexec -n {n} {' '.join(args)} exited {proc.returncode}:\n{out}")
    return out


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_zero_optimizer_checks(ranks, tmp_path):
    out = run_ranks(ranks, "checks", cwd=tmp_path)
    assert "PASS check_exact" in out and "PASS check_bad_setups" in out


@needs_mpi
def test_checkpoint_saved_at_3_ranks_resumes_at_2_and_1(tmp_path):
    """A checkpoint (whole, and as shards) saved by 3 ranks resumes, bitwise
    alike, at 2 ranks, at 1 rank, and in one process without MPI."""
    import zero_mpi_checks as z
    run_ranks(3, "save", str(tmp_path), cwd=tmp_path)
    assert sorted(os.listdir(tmp_path / "shards")) == [f"shard-{r}-of-3.fastopt" for r in range(3)]
    run_ranks(2, "resume", str(tmp_path), cwd=tmp_path)
    run_ranks(1, "resume", str(tmp_path), cwd=tmp_path)
    flat = fastopt.FlatParams(z.SHAPES, dtype=np.float32)
    plain = fastopt.Adam(z.groups_of(flat), lr=0.01, amsgrad=True)
    fastopt.load(tmp_path / "full.ckpt", flat, plain)
    for t in range(4, 4 + z.RESUME_STEPS):
        flat.grad_data[:] = z.global_grad(flat.data.size, t)
        plain.step()
    np.testing.assert_array_equal(flat.data, np.load(tmp_path / "final.npy"))


def test_import_needs_no_mpi():
    """``import fastopt`` (and fastopt.distributed) never imports mpi4py; without
    it, ZeroOptimizer says what to install."""
    code = ("import sys, fastopt, fastopt.distributed as d\n"
            "assert 'mpi4py' not in sys.modules\n"
            "sys.modules['mpi4py'] = None\n"
            "try:\n"
            "    d.ZeroOptimizer(fastopt.Adam, fastopt.FlatParams({'x': 3}))\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "fastopt[mpi]"' in out.stdout


@pytest.mark.parametrize("size", [0, 1, 2, 5, 58, 1001])
@pytest.mark.parametrize("ranks", [1, 2, 3, 7])
def test_shard_bounds(size, ranks):
    bounds = shard_bounds(size, ranks)
    assert len(bounds) == ranks and bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    counts = [b - a for a, b in bounds]
    assert max(counts) == -(-size // ranks) and max(counts) - min(counts) <= 1
