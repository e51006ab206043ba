"""The functional API against the NumPy oracle, for every flag, dtype, target and shape."""

import numpy as np
import pytest

import fastopt.functional as F
import reference as R
from cases import ALL, ALL_IDS, DTYPES, SHAPES, TARGETS, data, rtol
from conftest import assert_close

STEPS = 3


def run_fastopt(name, case, p, grads, target):
    """Step a copy of ``p`` with the functional API; return params and state after each step."""
    p = p.copy()
    history = []
    if name == "sgd":
        buf = np.empty_like(p)
        for k, g in enumerate(grads):
            F.sgd(p, g, buf, first_step=k == 0, target=target, **case)
            history.append((p.copy(), {"b": buf.copy()} if case["momentum"] else {}))
    elif name == "adagrad":
        hp = dict(case)
        s = np.full_like(p, hp.pop("initial_accumulator_value"))
        for t, g in enumerate(grads, 1):
            F.adagrad(p, g, s, step=t, target=target, **hp)
            history.append((p.copy(), {"s": s.copy()}))
    else:
        m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        for t, g in enumerate(grads, 1):
            F.adam(p, g, m, v, vmax, step=t, target=target, **case)
            st = {"m": m.copy(), "v": v.copy()}
            if case["amsgrad"]:
                st["vmax"] = vmax.copy()
            history.append((p.copy(), st))
    return history


def run_reference(name, case, p, grads):
    step = getattr(R, f"{name}_step")
    state = {} if name == "sgd" else getattr(R, f"{name}_init")(p, **case)
    history = []
    for g in grads:
        p, state = step(p, g, state, **case)
        history.append((p, {k: v for k, v in state.items() if k != "t"}))
    return history


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_matches_reference(name, case, dtype, target, shape):
    p, grads = data(shape, dtype, STEPS)
    got = run_fastopt(name, case, p, grads, target)
    want = run_reference(name, case, p, grads)
    for k, ((gp, gs), (wp, ws)) in enumerate(zip(got, want)):
        assert gp.dtype == dtype and gp.shape == shape
        assert_close(gp, wp, rtol(dtype), f"param after step {k + 1}")
        assert set(gs) == set(ws)
        for key in ws:
            assert gs[key].dtype == dtype
            assert_close(gs[key], ws[key], rtol(dtype), f"{key} after step {k + 1}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_serial_and_parallel_agree_bitwise(name, case, dtype):
    p, grads = data((100_003,), dtype, STEPS, seed=1)
    serial = run_fastopt(name, case, p, grads, "serial")
    parallel = run_fastopt(name, case, p, grads, "parallel")
    for (sp, ss), (pp, ps) in zip(serial, parallel):
        np.testing.assert_array_equal(sp, pp)
        for key in ss:
            np.testing.assert_array_equal(ss[key], ps[key])


def test_adamw_is_adam_with_decoupled_decay():
    p, (g,) = data((50,), np.float64, 1)
    a, b = p.copy(), p.copy()
    ma, va, mb, vb = (np.zeros_like(p) for _ in range(4))
    F.adamw(a, g, ma, va, step=1, lr=0.1)
    F.adam(b, g, mb, vb, step=1, lr=0.1, weight_decay=1e-2, decoupled_weight_decay=True)
    np.testing.assert_array_equal(a, b)


def test_float32_stays_float32():
    """A float32 step computes in float32: it agrees with the float32 oracle,
    not with a float64 computation rounded at the end."""
    p, (g,) = data((1000,), np.float32, 1, seed=3)
    got = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    F.adam(got, g, m, v, step=1, lr=0.01)
    want32, _ = R.adam_step(p, g, R.adam_init(p), lr=0.01)
    np.testing.assert_allclose(got, want32, rtol=2e-7, atol=0)


def test_non_contiguous_gradient_is_read_correctly():
    p, (g,) = data((40,), np.float64, 1)
    g2 = np.repeat(g, 2)[::2]  # same values, strided
    assert not g2.flags.c_contiguous
    a, b = p.copy(), p.copy()
    F.sgd(a, g, lr=0.1)
    F.sgd(b, g2, lr=0.1)
    np.testing.assert_array_equal(a, b)


def test_functions_return_none():
    p = np.ones(3)
    assert F.sgd(p, np.ones(3)) is None
