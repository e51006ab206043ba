"""Non-finite gradients, gradient scaling, threads, thread counts, read-only installs."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest

import fastopt
import fastopt.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [(fastopt.SGD, dict(lr=0.1, momentum=0.9)), (fastopt.Adagrad, dict(lr=0.1)),
           (fastopt.Adam, dict(lr=0.01, amsgrad=True)), (fastopt.AdamW, dict(lr=0.01))]


def state_copy(opt):
    return {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
            for i, s in opt.state.items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        for k in a[i]:
            np.testing.assert_array_equal(a[i][k], b[i][k])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("cls,kw", CLASSES)
def test_check_finite_skips_the_whole_step(cls, kw, target, bad):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(1000), rng.standard_normal(50)]
    opt = cls(params, target=target, **kw)
    assert opt.step([np.ones(1000), np.ones(50)], check_finite=True) is True
    before_p, before_s = [p.copy() for p in params], state_copy(opt)
    grads = [np.ones(1000), np.ones(50)]
    grads[1][17] = bad  # the second gradient: the first must not be applied either
    assert opt.step(grads, check_finite=True) is False
    for p, q in zip(params, before_p):
        np.testing.assert_array_equal(p, q)
    assert_same_state(state_copy(opt), before_s)
    assert opt.step(grads) is None  # default: propagate, as torch
    assert np.isnan(params[1][17]) or np.isinf(params[1][17])


def test_check_finite_with_flat_params_and_functional():
    flat = fastopt.FlatParams({"a": 10, "b": 5})
    opt = fastopt.Adam(flat)
    flat.grad["b"][2] = np.nan
    assert opt.step(check_finite=True) is False
    assert not flat.data.any() and opt.state == {}
    p, m, v = np.zeros(4), np.zeros(4), np.zeros(4)
    assert F.adam(p, np.array([1.0, np.inf, 0, 0]), m, v, step=1, check_finite=True) is False
    assert not p.any() and not m.any()
    assert F.adam(p, np.ones(4), m, v, step=1, check_finite=True) is True
    assert F.sgd(p, np.full(4, np.nan), check_finite=True) is False


def test_unscaling_overflow_counts_as_non_finite():
    p = np.zeros(2, np.float32)
    g = np.array([1.0, 3e38], np.float32)
    assert F.sgd(p, g, grad_scale=0.1, check_finite=True) is False  # 3e39 overflows float32
    assert not p.any()


@pytest.mark.parametrize("cls,kw", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_scale_equals_dividing_the_gradient(cls, kw, dtype):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(300).astype(dtype)
    scale = 1024.0  # a power of two: dividing and multiplying by 1/scale agree exactly
    a, b = p0.copy(), p0.copy()
    oa, ob = cls([a], **kw), cls([b], **kw)
    for _ in range(3):
        g = rng.standard_normal(300).astype(dtype)
        oa.step([g * dtype(scale)], grad_scale=scale)
        ob.step([g])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), "2"])
def test_bad_grad_scale(scale):
    p = np.zeros(3)
    opt = fastopt.SGD([p])
    with pytest.raises((TypeError, ValueError), match="grad_scale"):
        opt.step([np.ones(3)], grad_scale=scale)
    assert not p.any()


@pytest.mark.parametrize("cls,kw", CLASSES)
def test_bit_identical_whatever_the_thread_count(cls, kw):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(100_003).astype(np.float32)
    grads = [rng.standard_normal(100_003).astype(np.float32) for _ in range(3)]
    results = []
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            p = p0.copy()
            opt = cls([p], target="parallel", **kw)
            for g in grads:
                opt.step([g])
            results.append(p)
    finally:
        numba.set_num_threads(saved)
    p = p0.copy()
    opt = cls([p], target="serial", **kw)
    for g in grads:
        opt.step([g])
    for r in results:
        np.testing.assert_array_equal(r, p)


def _threaded_vs_sequential(n=200_003, steps=20, workers=4):
    """Each worker steps its own Adam; return (threaded results, sequential results)."""
    rng = np.random.default_rng(3)
    starts = [rng.standard_normal(n).astype(np.float32) for _ in range(workers)]
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(steps)]

    def work(p):
        opt = fastopt.Adam([p], lr=1e-3, target="parallel")
        for g in grads:
            opt.step([g])

    threaded = [s.copy() for s in starts]
    threads = [threading.Thread(target=work, args=(p,)) for p in threaded]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sequential = [s.copy() for s in starts]
    for p in sequential:
        work(p)
    return threaded, sequential


def test_concurrent_threads_match_sequential():
    threaded, sequential = _threaded_vs_sequential()
    for a, b in zip(threaded, sequential):
        np.testing.assert_array_equal(a, b)


def _available_layers():
    layers = ["workqueue"]
    try:
        from numba.np.ufunc import omppool  # noqa: F401
        layers.append("omp")
    except ImportError:
        pass
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
        layers.append("tbb")
    except ImportError:
        pass
    return layers


@pytest.mark.parametrize("layer", _available_layers())
def test_concurrent_threads_under_each_threading_layer(layer):
    """In a fresh process pinned to one threading layer (workqueue aborts the
    process on concurrent parallel calls unless fastopt guards them)."""
    code = textwrap.dedent("""
        import warnings, numba, numpy as np
        warnings.simplefilter("always")
        import test_robustness as t
        with warnings.catch_warnings(record=True) as caught:
            threaded, sequential = t._threaded_vs_sequential(n=50_003, steps=10)
        assert all((a == b).all() for a, b in zip(threaded, sequential))
        print(numba.threading_layer(), any("workqueue" in str(w.message) for w in caught))
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer,
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    used, warned = proc.stdout.split()
    assert used == layer
    assert warned == str(layer == "workqueue")


def test_read_only_install_falls_back_without_cache(tmp_path):
    """A copy of the package on a read-only mount, with no writable home or cache:
    fastopt imports, warns once, and steps."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here")
    ro = tmp_path / "ro"
    (ro / "home").mkdir(parents=True)
    shutil.copytree(os.path.join(ROOT, "fastopt"), ro / "pkg" / "fastopt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import warnings, numpy as np; warnings.simplefilter('always');"
            "import fastopt; p = np.zeros(3); fastopt.Adam([p]).step([np.ones(3)]); print(p[0])")
    script = (f"mount --bind -o ro {ro} {ro} && cd / && "
              f"HOME={ro}/home XDG_CACHE_HOME={ro}/home PYTHONDONTWRITEBYTECODE=1 "
              f"PYTHONPATH={ro}/pkg {sys.executable} -c \"{code}\"")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    if "mount" in proc.stderr and proc.returncode != 0 and "Traceback" not in proc.stderr:
        pytest.skip(f"cannot mount read-only here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout) == pytest.approx(-0.001)
    assert proc.stderr.count("numba cannot write its cache") == 1
