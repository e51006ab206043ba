"""The optimizer classes against the NumPy oracle: groups, schedules, skipped
gradients, state dicts."""

import copy
import pickle

import numpy as np
import pytest

import fastopt
import reference as R
from cases import ALL, ALL_IDS, DTYPES, TARGETS, rtol
from conftest import assert_close

CLASSES = {"sgd": fastopt.SGD, "adagrad": fastopt.Adagrad, "adam": fastopt.Adam}
SHAPES = [(100_003,), (7,), (), (3, 4), (0,)]
STEPS = 3


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


def make_grads(params, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(p.shape) * (k + 1), dtype=p.dtype) for p in params]
            for k in range(steps)]


def reference_run(name, params, grads, hps):
    """Oracle steps; ``hps[k]`` are the hyperparameters of step k (one dict, or one per param)."""
    step = getattr(R, f"{name}_step")
    init = (lambda p, **hp: {}) if name == "sgd" else getattr(R, f"{name}_init")
    first = hps[0] if isinstance(hps[0], list) else [hps[0]] * len(params)
    states = [init(p, **hp) for p, hp in zip(params, first)]
    params = [p.copy() for p in params]
    for k, gs in enumerate(grads):
        per_param = hps[k] if isinstance(hps[k], list) else [hps[k]] * len(params)
        for i, g in enumerate(gs):
            if g is not None:
                params[i], states[i] = step(params[i], g, states[i], **per_param[i])
    return params


@pytest.mark.parametrize("target", TARGETS + [None])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_class_matches_reference(name, case, dtype, target):
    params = make_params(dtype)
    grads = make_grads(params, STEPS)
    want = reference_run(name, params, grads, [case] * STEPS)
    mine = [p.copy() for p in params]
    opt = CLASSES[name](mine, target=target, **case)
    for gs in grads:
        opt.step(gs)
    for i, (a, b) in enumerate(zip(mine, want)):
        assert_close(a, b, rtol(dtype), f"params[{i}]")


@pytest.mark.parametrize("name", CLASSES)
def test_param_groups_schedule_and_skipped_grads(name):
    """Two groups with their own hyperparameters, lr changed between steps, and a
    None gradient that leaves its parameter and state untouched."""
    params = make_params(np.float64)
    grads = make_grads(params, STEPS)
    grads[1][2] = None  # params[2] skips step 2
    base = {"sgd": dict(lr=0.1, momentum=0.9), "adagrad": dict(lr=0.1, lr_decay=0.01),
            "adam": dict(lr=0.01, amsgrad=True)}[name]
    second = {**base, "weight_decay": 0.1, "maximize": True}
    split = 2
    mine = [p.copy() for p in params]
    opt = CLASSES[name]([{"params": mine[:split]}, {"params": mine[split:], **second}], **base)
    lrs = [1.0, 0.5, 0.25]
    hps = []
    for k, gs in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = base["lr"] * lrs[k]
        opt.step(gs)
        hps.append([{**base, "lr": base["lr"] * lrs[k]}] * split
                   + [{**second, "lr": base["lr"] * lrs[k]}] * (len(params) - split))
    want = reference_run(name, params, grads, hps)
    for i, (a, b) in enumerate(zip(mine, want)):
        assert_close(a, b, rtol(np.float64), f"params[{i}]")
    if name != "sgd":
        assert opt.state[2]["step"] == STEPS - 1
        assert opt.state[0]["step"] == STEPS


def test_adamw_defaults():
    w = np.zeros(3)
    opt = fastopt.AdamW([w])
    group = opt.param_groups[0]
    assert group["weight_decay"] == 1e-2 and group["decoupled_weight_decay"] is True
    assert fastopt.Adam([np.zeros(1)]).param_groups[0]["weight_decay"] == 0


def test_adamw_matches_reference():
    params = make_params(np.float32)
    grads = make_grads(params, STEPS)
    mine = [p.copy() for p in params]
    opt = fastopt.AdamW(mine, lr=0.01)
    for gs in grads:
        opt.step(gs)
    want = reference_run("adam", params, grads,
                         [dict(lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True)] * STEPS)
    for a, b in zip(mine, want):
        assert_close(a, b, rtol(np.float32))


@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_state_dict_round_trip_resumes_bit_identically(name, case):
    cls = CLASSES[name]
    params = make_params(np.float32)
    grads = make_grads(params, 5)
    straight = [p.copy() for p in params]
    opt = cls(straight, **case)
    for gs in grads:
        opt.step(gs)

    resumed = [p.copy() for p in params]
    first = cls(resumed, **case)
    for gs in grads[:2]:
        first.step(gs)
    blob = pickle.dumps(first.state_dict())
    saved_params = copy.deepcopy(resumed)
    del first
    restored = [p.copy() for p in saved_params]
    second = cls(restored, lr=123.0)  # hyperparameters come from the state dict
    second.load_state_dict(pickle.loads(blob))
    assert second.param_groups[0]["lr"] == case["lr"]
    for gs in grads[2:]:
        second.step(gs)
    for a, b in zip(restored, straight):
        np.testing.assert_array_equal(a, b)


def test_state_dict_layout_is_torchs():
    w, b = np.zeros(4), np.zeros(2)
    opt = fastopt.Adam([{"params": [w]}, {"params": [b], "lr": 0.1}], amsgrad=True)
    opt.step([np.ones(4), np.ones(2)])
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][1]["step"] == 1
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.1
    sgd = fastopt.SGD([w], momentum=0.9)
    sgd.step([np.ones(4)])
    assert set(sgd.state_dict()["state"][0]) == {"momentum_buffer"}
    ada = fastopt.Adagrad([w], initial_accumulator_value=0.5)
    assert set(ada.state_dict()["state"][0]) == {"step", "sum"}
    np.testing.assert_array_equal(ada.state[0]["sum"], 0.5)


def test_load_state_dict_copies_arrays():
    w = np.zeros(3)
    opt = fastopt.Adam([w])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    other = fastopt.Adam([np.zeros(3)])
    other.load_state_dict(sd)
    assert other.state[0]["exp_avg"] is not sd["state"][0]["exp_avg"]
    np.testing.assert_array_equal(other.state[0]["exp_avg"], sd["state"][0]["exp_avg"])


def test_repr_names_hyperparameters():
    text = repr(fastopt.SGD([np.zeros(2)], lr=0.5))
    assert "SGD" in text and "lr: 0.5" in text
