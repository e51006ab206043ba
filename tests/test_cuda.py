"""The CUDA target where there is no GPU: optional imports, PTX, and the simulator.

- fastopt works without numba-cuda, and asking for CUDA then says what to install;
- every CUDA kernel compiles to PTX for sm_80 and sm_90 (numba-cuda's NVVM
  from PyPI, no GPU needed), float32 kernels with no float64 arithmetic;
- ``tests/test_cuda_device.py`` runs under the CUDA simulator in a subprocess
  (the simulator must be chosen before numba.cuda is first imported).

Tests that need numba-cuda skip without it.
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fastopt
from fastopt.kernels import spec

ROOT = Path(__file__).resolve().parent.parent
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
needs_numba_cuda = pytest.mark.skipif(not HAVE_NUMBA_CUDA,
                                      reason="numba-cuda is not installed (pip install 'fastopt[cuda]')")


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **env})


def test_fastopt_works_without_numba_cuda():
    """No numba-cuda: import and CPU steps work and import no numba.cuda; CUDA says what to install."""
    result = run_python("""
        import sys
        sys.modules["numba_cuda"] = None  # as if numba-cuda were not installed
        import numpy as np
        import fastopt, fastopt.functional as F
        p = np.zeros(3)
        F.adam(p, np.ones(3), np.zeros(3), np.zeros(3), step=1)
        fastopt.Adam([p]).step([np.ones(3)])
        fastopt.Adam(fastopt.FlatParams({"a": 3})).step()
        assert "numba.cuda" not in sys.modules, "a CPU step imported numba.cuda"
        try:
            fastopt.FlatParams({"a": 3}, device="cuda")
        except ImportError as e:
            assert 'pip install "fastopt[cuda]"' in str(e), e
        else:
            raise AssertionError("no ImportError")
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_unknown_device_refused():
    with pytest.raises(ValueError, match="device must be one of"):
        fastopt.FlatParams({"a": 3}, device="gpu")


@needs_numba_cuda
def test_no_gpu_says_so():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available")
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        fastopt.FlatParams({"a": 3}, device="cuda")


def test_cuda_settings_from_environment(monkeypatch):
    monkeypatch.setenv("FASTOPT_CUDA_THREADS_PER_BLOCK", "128")
    monkeypatch.setenv("FASTOPT_CUDA_MAX_BLOCKS", "64")
    fastopt.config.reset()
    assert (fastopt.config.CUDA_THREADS_PER_BLOCK, fastopt.config.CUDA_MAX_BLOCKS) == (128, 64)
    monkeypatch.setenv("FASTOPT_CUDA_THREADS_PER_BLOCK", "2048")
    with pytest.raises(ValueError, match="FASTOPT_CUDA_THREADS_PER_BLOCK"):
        fastopt.config.reset()


# --- the simulator ---------------------------------------------------------------

@needs_numba_cuda
def test_device_tests_pass_under_the_simulator():
    """``tests/test_cuda_device.py`` (every kernel, flag and dtype against the CPU
    kernels; optimizers, FlatParams, state dicts, errors) under NUMBA_ENABLE_CUDASIM=1."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_device.py"],
        cwd=ROOT, text=True, capture_output=True, timeout=600,
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 100, tail


# --- PTX ---------------------------------------------------------------------------

def _nvvm_available():
    try:
        from numba.cuda.cudadrv import nvvm
        return bool(nvvm.is_available())
    except Exception:
        return False


@pytest.fixture(scope="module")
def kernels():
    if not HAVE_NUMBA_CUDA:
        pytest.skip("numba-cuda is not installed (pip install 'fastopt[cuda]')")
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        pytest.skip("the CUDA simulator compiles no PTX")
    if not _nvvm_available():
        pytest.skip("NVVM is not installed (pip install 'numba-cuda[cu12]')")
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    from fastopt.kernels import cuda as K
    original = dispatcher.get_current_device
    if not cuda.is_available():
        # numba-cuda compiles a called device function for the current device's
        # compute capability, so compile_ptx of a kernel that calls one wants a
        # GPU; without one, name a capability (the PTX's own target is compile_ptx's cc).
        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))
    yield K
    dispatcher.get_current_device = original


INSTRUCTION = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)", re.M)
# Every declared kernel with a CUDA implementation (these three are the CPU's).
KERNEL_NAMES = [name for name in spec.KERNELS
                if name not in ("any_nonfinite", "sq_norm", "max_abs_bits")]
# The norm kernels accumulate (atomically, in float64 or int64 whatever the dtype).
REDUCTIONS = ("sq_norm_cuda", "max_abs_bits_cuda")


def instructions(ptx):
    body = ptx[ptx.index(".entry"):]
    return INSTRUCTION.findall(body)


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_compiles_to_ptx(kernels, name, dtype, cc):
    if dtype not in spec.KERNELS[name].dtypes:
        pytest.skip(f"{name} takes {spec.KERNELS[name].dtypes} parameters only")
    ptx = kernels.ptx(name, dtype, cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".visible .entry" in ptx
    ops = instructions(ptx)
    stores = ("atom.global", "red.global") if name in REDUCTIONS else ("st.global",)
    assert any(op.startswith(stores) for op in ops), "the kernel stores nothing"
    # IEEE arithmetic: no approximate or flush-to-zero instructions (fastmath is off).
    assert not [op for op in ops if ".approx" in op or ".ftz" in op]
    if dtype == "float32" and name not in REDUCTIONS:
        # float32 stays float32: no float64 arithmetic or conversion anywhere.
        assert not [op for op in ops if ".f64" in op], "float64 instructions in a float32 kernel"
    if name in ("adagrad", "adam") or name.startswith(("adagrad_", "adam_")):
        suffix = "f32" if dtype == "float32" else "f64"
        assert f"sqrt.rn.{suffix}" in ops and f"div.rn.{suffix}" in ops


def test_every_kernel_takes_the_declared_arguments():
    """Each CUDA kernel's parameters are those ``spec.py`` declares (they give its PTX signature)."""
    if not HAVE_NUMBA_CUDA:
        pytest.skip("numba-cuda is not installed")
    import inspect
    from fastopt.kernels import cuda as K
    assert sorted(K.ALL) == sorted(KERNEL_NAMES)
    for name, kernel in K.ALL.items():
        assert tuple(inspect.signature(kernel.py_func).parameters) == spec.KERNELS[name].names, name


@needs_numba_cuda
def test_check_finite_waits_once_per_step_under_the_simulator():
    """check_finite over three GPU gradients: one flag allocated, one launch per
    gradient, one copy back, whichever gradient holds the NaN."""
    result = run_python("""
        import numpy as np
        from numba import cuda
        import fastopt
        from fastopt import _cuda
        K = _cuda.kernels()
        counts = {"to_device": 0, "launch": 0, "copy": 0}
        real_to_device, real_kernel = cuda.to_device, K.ALL["any_nonfinite_cuda"]

        def to_device(*args, **kwargs):
            counts["to_device"] += 1
            array = real_to_device(*args, **kwargs)
            real_copy = array.copy_to_host
            def copy_to_host(*a, **k):
                counts["copy"] += 1
                return real_copy(*a, **k)
            array.copy_to_host = copy_to_host
            return array

        class Counting:
            def __getitem__(self, config):
                counts["launch"] += 1
                return real_kernel[config]

        params = [cuda.to_device(np.zeros(n)) for n in (5, 6, 7)]
        opt = fastopt.SGD(params, lr=0.1)
        cuda.to_device, K.ALL["any_nonfinite_cuda"] = to_device, Counting()
        for bad in (None, 0, 2):
            grads = [np.ones(n) for n in (5, 6, 7)]
            if bad is not None:
                grads[bad][1] = np.nan
            grads = [real_to_device(g) for g in grads]
            for key in counts:
                counts[key] = 0
            assert opt.step(grads, check_finite=True) is (bad is None), bad
            assert counts == {"to_device": 1, "launch": 3, "copy": 1}, (bad, counts)
        print("ok")
    """, NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@needs_numba_cuda
def test_gpu_state_set_to_another_parameter_or_its_state_is_refused_in_the_simulator():
    # the host sweep returned at once for GPU arrays: such state was written twice
    result = run_python("""
        import numpy as np, pytest, fastopt
        from numba import cuda
        a, b = (cuda.to_device(np.ones(4, np.float32)) for _ in range(2))
        grads = [cuda.to_device(np.ones(4, np.float32)) for _ in range(2)]
        opt = fastopt.Adam([a, b], lr=0.1, target="cuda")
        opt.step(grads)
        opt.state[1]["exp_avg"] = opt.state[0]["exp_avg"]
        with pytest.raises(ValueError, match="shares memory with params.0.'s state 'exp_avg'"):
            opt.step(grads)
        sgd = fastopt.SGD([a, b], lr=0.1, momentum=0.9, target="cuda")
        sgd.step(grads)
        sgd.state[1]["momentum_buffer"] = a
        before = a.copy_to_host()
        with pytest.raises(ValueError, match="shares memory with params.0.$"):
            sgd.step(grads)
        assert (a.copy_to_host() == before).all()
        print("ok")
    """, NUMBA_ENABLE_CUDASIM="1")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# --- bench ---------------------------------------------------------------------------

def test_bench_cuda_rows_skipped_without_a_gpu(capsys):
    from fastopt import _cuda, bench
    try:
        _cuda.cuda()
    except (ImportError, RuntimeError):
        pass
    else:
        pytest.skip("a GPU is available")
    # nothing measured: said, and not a success (it was 0, silently)
    assert bench.main(["--device", "cuda", "--sizes", "100", "--optimizers", "sgd"]) == 1
    err = capsys.readouterr().err
    assert "CUDA rows skipped" in err and "nothing was measured" in err


@pytest.mark.parametrize("kind", ["fastopt", "roofline"])
def test_bench_make_step_on_the_cpu(kind):
    from fastopt import bench
    step, wait = bench.make_step("adam", 100, np.float32, kind=kind)
    step()
    wait()
    with pytest.raises(ValueError, match="torch"):
        bench.make_step("adam", 100, np.float32, kind="torch")


def test_numba_cuda_on_a_numpy_it_cannot_compile_with_is_named(monkeypatch):
    """numba-cuda 0.30.x fails at its first compile on NumPy 2.5 (numpy.row_stack
    is gone): fastopt says which versions and what to install, before that."""
    import importlib
    from fastopt import _cuda

    def removed(name):
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.30.4")
    monkeypatch.setattr(importlib, "import_module", removed)
    with pytest.raises(ImportError, match=r"numba-cuda 0\.30\.4 does not work with NumPy .*"
                                          r"numpy<2\.5"):
        _cuda.check_numpy_supported()


def test_the_cuda_extra_keeps_numpy_below_2_5():
    # (read as text: tomllib is Python 3.11's, and fastopt supports 3.10)
    cuda_extra = re.search(r"^cuda = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert cuda_extra and '"numpy<2.5"' in cuda_extra.group(1)
