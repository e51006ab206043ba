"""Fused gradient clipping by global norm (``max_grad_norm``, ``norm_type``):
the classes and the functional API against ``torch.nn.utils.clip_grad_norm_``
followed by torch's step, the norm's special values, the shared pass with
``check_finite``, and the CUDA kernels under the simulator (in a subprocess)."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastopt
import fastopt.functional as F
from fastopt import _update as U

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(3, 4), (7,), (2, 2, 2)]
CASES = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
         ("SGD", dict(lr=0.1, weight_decay=0.1, maximize=True)),
         ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1)),
         ("Adam", dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
         ("AdamW", dict(lr=0.1, betas=(0.8, 0.9)))]


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(1e-300, np.max(np.abs(b))))


@pytest.mark.parametrize("norm_type", [2.0, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e3, 0.0])
@pytest.mark.parametrize("name,kw", CASES, ids=lambda x: x if isinstance(x, str) else None)
def test_classes_match_torch_clip_then_step(name, kw, max_norm, norm_type):
    rng = np.random.default_rng(1)
    ps = [rng.standard_normal(s) for s in SHAPES]
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = getattr(fastopt, name)(ps, **kw)
    topt = getattr(torch.optim, name)(tps, foreach=False, **kw)
    for k in range(6):
        gs = [rng.standard_normal(s) * 3 for s in SHAPES]
        if k == 2:
            gs[1] = None  # a parameter without a gradient is skipped, and out of the norm
        for t, g in zip(tps, gs):
            t.grad = None if g is None else torch.tensor(g)
        norm = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type=norm_type, foreach=False)
        topt.step()
        assert opt.step(gs, max_grad_norm=max_norm, norm_type=norm_type) is None
        assert opt.last_grad_norm == pytest.approx(norm.item(), rel=1e-12)
    for p, t in zip(ps, tps):
        assert rel_err(p, t.detach().numpy()) < 1e-10


def test_clipping_with_grad_scale_uses_the_unscaled_norm():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(10)
    q = p.copy()
    g = rng.standard_normal(10) * 1024
    fastopt.SGD([p], lr=0.1).step([g], grad_scale=1024.0, max_grad_norm=0.5)
    opt = fastopt.SGD([q], lr=0.1)
    opt.step([g / 1024], max_grad_norm=0.5)
    np.testing.assert_allclose(p, q, rtol=1e-15)
    assert opt.last_grad_norm == pytest.approx(np.linalg.norm(g / 1024), rel=1e-13)


def test_mixed_dtypes_and_a_large_parallel_gradient():
    rng = np.random.default_rng(3)
    big = rng.standard_normal(300_000).astype(np.float32)
    small = rng.standard_normal(5)
    ps = [np.zeros(big.shape, np.float32), np.zeros(5)]
    opt = fastopt.SGD(ps, lr=1.0)
    opt.step([big, small], max_grad_norm=1.0)
    expected = math.sqrt(np.sum(big.astype(np.float64) ** 2) + np.sum(small ** 2))
    assert opt.last_grad_norm == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(ps[1], -small / (expected + 1e-6), rtol=1e-12)
    opt.step([big, small], max_grad_norm=1.0, norm_type=math.inf)
    assert opt.last_grad_norm == max(float(np.abs(big).max()), float(np.abs(small).max()))


@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_kernels_special_values(target, dtype):
    g = np.array([1.0, -3.0, 2.0], dtype)
    assert U.grad_norm([g], 1.0, 2.0, target) == pytest.approx(math.sqrt(14), rel=1e-7)
    assert U.grad_norm([g], 0.5, math.inf, target) == 1.5
    assert U.grad_norm([np.zeros(0, dtype)], 1.0, math.inf, target) == 0.0
    assert U.grad_norm([], 1.0, 2.0, target) == 0.0
    for bad, two, inf in [(np.nan, math.nan, math.nan), (-np.inf, math.inf, math.inf)]:
        h = g.copy()
        h[1] = bad
        for norm_type, want in ((2.0, two), (math.inf, inf)):
            got = U.grad_norm([h], 1.0, norm_type, target)
            assert (math.isnan(got) and math.isnan(want)) or got == want
    both = np.array([np.inf, np.nan], dtype)
    assert math.isnan(U.grad_norm([both], 1.0, math.inf, target))


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_finite_shares_the_norm_pass(bad, norm_type, monkeypatch):
    calls = []
    monkeypatch.setattr(U, "any_nonfinite", lambda *a: calls.append(a))
    p = np.ones(4)
    opt = fastopt.Adam([p])
    g = np.array([1.0, bad, 0.0, 0.0])
    assert opt.step([g], check_finite=True, max_grad_norm=1.0, norm_type=norm_type) is False
    assert np.all(p == 1) and opt.state == {} and not calls
    assert opt.step([np.ones(4)], check_finite=True, max_grad_norm=1.0) is True
    assert opt.last_grad_norm == 2.0 and not calls
    q = np.ones(4)
    assert F.sgd(q, g, check_finite=True, max_grad_norm=1.0, norm_type=norm_type) != 0
    assert np.all(q == 1)


def test_without_check_finite_non_finite_norms_act_as_in_torch():
    for g in ([1.0, np.inf, 2.0], [1.0, np.nan, 2.0]):
        p, t = np.ones(3), torch.ones(3, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g, dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_([t], 1.0, foreach=False)
        torch.optim.SGD([t], lr=0.1, foreach=False).step()
        fastopt.SGD([p], lr=0.1).step([np.array(g)], max_grad_norm=1.0)
        np.testing.assert_array_equal(p, t.detach().numpy())


@pytest.mark.parametrize("fn", ["sgd", "adagrad", "adam", "adamw"])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_functional_matches_torch_and_returns_the_norm(fn, norm_type):
    rng = np.random.default_rng(4)
    p = rng.standard_normal((4, 5))
    t = torch.tensor(p.copy(), requires_grad=True)
    name = {"sgd": "SGD", "adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW"}[fn]
    kw = dict(lr=0.1, momentum=0.9) if fn == "sgd" else dict(lr=0.1)
    topt = getattr(torch.optim, name)([t], foreach=False, **kw)
    states = {"sgd": [np.empty_like(p)], "adagrad": [np.zeros_like(p)],
              "adam": [np.zeros_like(p), np.zeros_like(p)],
              "adamw": [np.zeros_like(p), np.zeros_like(p)]}[fn]
    for k in range(1, 5):
        g = rng.standard_normal((4, 5)) * 2
        t.grad = torch.tensor(g, dtype=torch.float64)
        norm = torch.nn.utils.clip_grad_norm_([t], 0.7, norm_type=norm_type, foreach=False)
        topt.step()
        extra = dict(first_step=k == 1) if fn == "sgd" else dict(step=k)
        got = getattr(F, fn)(p, g, *states, max_grad_norm=0.7, norm_type=norm_type, **extra, **kw)
        assert got == pytest.approx(norm.item(), rel=1e-12)
    assert rel_err(p, t.detach().numpy()) < 1e-10


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=math.nan), ValueError, "max_grad_norm"),
    (dict(max_grad_norm="1"), TypeError, "max_grad_norm"),
    (dict(max_grad_norm=1.0, norm_type=1.0), ValueError, "norm_type"),
    (dict(max_grad_norm=1.0, norm_type=None), TypeError, "norm_type"),
    (dict(max_grad_norm=1.0, norm_type=True), TypeError, "norm_type"),
])
def test_bad_clipping_arguments_change_nothing(kwargs, exc, match):
    p = np.ones(3)
    opt = fastopt.Adam([p])
    with pytest.raises(exc, match=match):
        opt.step([np.ones(3)], **kwargs)
    assert np.all(p == 1) and opt.state == {} and opt.last_grad_norm is None
    with pytest.raises(exc, match=match):
        F.adam(p, np.ones(3), np.zeros(3), np.zeros(3), step=1, **kwargs)
    assert np.all(p == 1)


def test_flat_params_step_with_clipping():
    flat = fastopt.FlatParams({"a": (2, 3), "b": 4})
    flat.grad["a"][:] = 3.0
    flat.grad["b"][:] = 4.0
    opt = fastopt.SGD(flat, lr=1.0)
    opt.step(max_grad_norm=1.0)
    norm = math.sqrt(6 * 9 + 4 * 16)
    assert opt.last_grad_norm == pytest.approx(norm)
    np.testing.assert_allclose(flat.data[:6], -3.0 / (norm + 1e-6))


_SIMULATED = textwrap.dedent("""
    import math
    import numpy as np
    from numba import cuda
    import fastopt
    from fastopt import _update as U, config
    config.CUDA_THREADS_PER_BLOCK = 5  # not a power of two: the tree's odd tails
    config.CUDA_MAX_BLOCKS = 3
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        gs = [rng.standard_normal(n).astype(dtype) for n in (37, 1, 0)]
        for norm_type in (2.0, math.inf):
            want = U.grad_norm(gs, 0.5, norm_type, "serial")
            got = U.grad_norm([cuda.to_device(g) for g in gs], 0.5, norm_type, "cuda")
            assert abs(got - want) <= 1e-6 * want, (dtype, norm_type, got, want)
        bad = gs[0].copy(); bad[3] = np.nan
        assert math.isnan(U.grad_norm([cuda.to_device(bad)], 1.0, math.inf, "cuda"))
    mixed = [rng.standard_normal(9).astype(np.float32), rng.standard_normal(4)]
    want = U.grad_norm(mixed, 1.0, 2.0, "serial")
    got = U.grad_norm([cuda.to_device(g) for g in mixed], 1.0, 2.0, None)
    assert abs(got - want) <= 1e-6 * want
    p, q = rng.standard_normal(11), None
    q = p.copy()
    g = rng.standard_normal(11) * 5
    dp = cuda.to_device(p)
    fastopt.Adam([dp], lr=0.1).step([cuda.to_device(g)], max_grad_norm=0.5)
    fastopt.Adam([q], lr=0.1).step([g], max_grad_norm=0.5)
    assert np.allclose(dp.copy_to_host(), q, rtol=1e-12, atol=0)
    print("ok")
""")


def test_cuda_norm_kernels_under_the_simulator():
    pytest.importorskip("numba_cuda")
    result = subprocess.run([sys.executable, "-c", _SIMULATED], cwd=ROOT, text=True,
                            capture_output=True, timeout=300,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
