"""Parity with torch.optim (skipped when torch is not installed).

torch on the CPU runs its single-tensor implementation by default, whose
order of operations fastopt follows; float64 must agree to ~1e-12 relative.
"""

import numpy as np
import pytest

import fastopt
from cases import ALL, ALL_IDS, DTYPES

torch = pytest.importorskip("torch")

TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}
MINE = {"sgd": fastopt.SGD, "adagrad": fastopt.Adagrad, "adam": fastopt.Adam}
SHAPES = [(1000,), (), (3, 5)]
STEPS = 5
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def run_both(name, case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s) * (k + 1), dtype=dtype) for s in SHAPES]
             for k in range(STEPS)]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    topt = TORCH[name](tparams, **case)
    mine = [p.copy() for p in params]
    opt = MINE[name](mine, **case)
    for gs in grads:
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        topt.step()
        opt.step(gs)
    return mine, [tp.detach().numpy() for tp in tparams], opt, topt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_matches_torch(name, case, dtype):
    mine, theirs, opt, topt = run_both(name, case, dtype)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype], err_msg=f"params[{i}]")
    tstate = topt.state_dict()["state"]
    for i, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            want = tstate[i][key]
            if key == "step":
                assert value == int(want)
            else:
                np.testing.assert_allclose(value, want.numpy(), rtol=TOL[dtype], atol=TOL[dtype],
                                           err_msg=f"state[{i}][{key}]")


def test_adamw_matches_torch():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(100)
    tp = torch.tensor(p, requires_grad=True)
    topt = torch.optim.AdamW([tp], lr=0.01, amsgrad=True)
    mine = p.copy()
    opt = fastopt.AdamW([mine], lr=0.01, amsgrad=True)
    for k in range(STEPS):
        g = rng.standard_normal(100)
        tp.grad = torch.tensor(g)
        topt.step()
        opt.step([g])
    np.testing.assert_allclose(mine, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_loads_torch_state_dict(name):
    """A state dict saved by torch.optim loads into fastopt and continues identically."""
    case = {"sgd": dict(lr=0.1, momentum=0.9), "adagrad": dict(lr=0.1),
            "adam": dict(lr=0.01, amsgrad=True)}[name]
    mine, theirs, opt, topt = run_both(name, case, np.float64)
    fresh = [t.copy() for t in theirs]
    resumed = MINE[name](fresh, lr=99.0)
    resumed.load_state_dict(topt.state_dict())
    assert resumed.param_groups[0]["lr"] == case["lr"]
    rng = np.random.default_rng(5)
    gs = [rng.standard_normal(p.shape) for p in mine]
    opt.step(gs)
    resumed.step(gs)
    for a, b in zip(fresh, mine):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
