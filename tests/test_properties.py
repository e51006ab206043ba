"""Property-based tests (hypothesis): random shapes, dtypes and hyperparameters
against the oracle; random bad arguments and malformed state dicts are refused
with TypeError/ValueError and change nothing."""

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastopt
import fastopt.functional as F
import reference as R
from cases import rtol
from conftest import assert_close

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

dtypes = st.sampled_from([np.float32, np.float64])
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
unit = st.floats(0.0, 1.0, exclude_max=True)
small = st.floats(0.0, 0.5)


def values(dtype, shape):
    return hnp.arrays(dtype, shape, elements=st.floats(-8, 8, width=32))


hyper = {
    "sgd": st.fixed_dictionaries({
        "lr": small, "momentum": st.sampled_from([0.0, 0.5, 0.9]), "dampening": small,
        "weight_decay": small, "nesterov": st.booleans(), "maximize": st.booleans()}),
    "adagrad": st.fixed_dictionaries({
        "lr": small, "lr_decay": small, "weight_decay": small, "eps": st.floats(1e-10, 1e-3),
        "initial_accumulator_value": small, "maximize": st.booleans()}),
    "adam": st.fixed_dictionaries({
        "lr": small, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-3),
        "weight_decay": small, "amsgrad": st.booleans(), "maximize": st.booleans(),
        "decoupled_weight_decay": st.booleans()}),
}


@st.composite
def problems(draw):
    name = draw(st.sampled_from(sorted(hyper)))
    hp = draw(hyper[name])
    if name == "sgd" and hp["nesterov"]:
        hp.update(momentum=0.9, dampening=0.0)
    dtype, shape = draw(dtypes), draw(shapes)
    p = draw(values(dtype, shape))
    grads = [draw(values(dtype, shape)) for _ in range(draw(st.integers(1, 3)))]
    return name, hp, p, grads, draw(st.sampled_from(["serial", "parallel"]))


@SETTINGS
@given(problems())
def test_random_problems_match_the_oracle(problem):
    name, hp, p0, grads, target = problem
    p, ref = p0.copy(), p0.copy()
    if name == "sgd":
        buf, state = np.empty_like(p), {}
        for k, g in enumerate(grads):
            F.sgd(p, g, buf, first_step=k == 0, target=target, **hp)
            ref, state = R.sgd_step(ref, g, state, **hp)
    elif name == "adagrad":
        kw = {k: v for k, v in hp.items() if k != "initial_accumulator_value"}
        s, state = np.full_like(p, hp["initial_accumulator_value"]), R.adagrad_init(p, **hp)
        for t, g in enumerate(grads, 1):
            F.adagrad(p, g, s, step=t, target=target, **kw)
            ref, state = R.adagrad_step(ref, g, state, **hp)
    else:
        m, v, vm, state = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), R.adam_init(p, **hp)
        for t, g in enumerate(grads, 1):
            F.adam(p, g, m, v, vm, step=t, target=target, **hp)
            ref, state = R.adam_step(ref, g, state, **hp)
    assert p.dtype == p0.dtype and p.shape == p0.shape
    assert_close(p, ref, 100 * rtol(p.dtype))


JUNK = [None, 1, 1.5, "x", [1.0, 2.0], (1,), {}, np.float64(1.0), np.array(1.0),
        np.zeros(3), np.zeros(4), np.zeros(3, np.float32), np.zeros(3, np.int64),
        np.zeros((3, 1)), np.zeros(6)[::2], np.array(["a", "b", "c"]), np.zeros(3, complex),
        float("nan"), float("inf"), -1.0, True, object()]


@SETTINGS
@given(st.sampled_from(["sgd", "adagrad", "adam"]), st.data())
def test_random_bad_arguments_raise_cleanly(name, data):
    """Any mix of junk in any argument: TypeError or ValueError (never a numba
    error), and the valid arrays are unchanged."""
    p = np.arange(3.0)
    arrays = {"sgd": ["param", "grad", "momentum_buffer"], "adagrad": ["param", "grad", "state_sum"],
              "adam": ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]}[name]
    kwargs = {a: np.ones(3) for a in arrays}
    kwargs["param"] = p
    scalars = {"sgd": ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                       "first_step", "grad_scale", "check_finite", "target"],
               "adagrad": ["step", "lr", "lr_decay", "weight_decay", "eps", "maximize", "grad_scale",
                           "check_finite", "target"],
               "adam": ["step", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                        "decoupled_weight_decay", "grad_scale", "check_finite", "target"]}[name]
    if name != "sgd":
        kwargs["step"] = 1
    for key in data.draw(st.lists(st.sampled_from(arrays + scalars), min_size=1, max_size=3)):
        kwargs[key] = data.draw(st.sampled_from(JUNK))
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    try:
        getattr(F, name)(**kwargs)
    except (TypeError, ValueError):
        for k, v in before.items():
            np.testing.assert_array_equal(kwargs[k], v)


def _valid_state_dict():
    params = [np.arange(4.0), np.arange(3.0).reshape(3, 1)]
    opt = fastopt.Adam([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.1}], amsgrad=True)
    opt.step([np.ones(4), np.ones((3, 1))])
    return opt.state_dict()


_MUTATIONS = [
    lambda sd, d: sd.pop(d.draw(st.sampled_from(sorted(sd)))),
    lambda sd, d: sd.__setitem__(d.draw(st.sampled_from(["state", "param_groups"])), d.draw(st.sampled_from(JUNK))),
    lambda sd, d: sd["state"].pop(d.draw(st.sampled_from(sorted(sd["state"]))), None),
    lambda sd, d: sd["state"].__setitem__(d.draw(st.sampled_from([0, 1, 2, "0", -1])), d.draw(st.sampled_from(JUNK))),
    lambda sd, d: sd["state"][d.draw(st.sampled_from([0, 1]))].__setitem__(
        d.draw(st.sampled_from(["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "other"])),
        d.draw(st.sampled_from(JUNK))),
    lambda sd, d: sd["state"][d.draw(st.sampled_from([0, 1]))].pop(
        d.draw(st.sampled_from(["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])), None),
    lambda sd, d: sd["param_groups"][d.draw(st.sampled_from([0, 1]))].__setitem__(
        d.draw(st.sampled_from(["lr", "betas", "eps", "amsgrad", "params", "weight_decay"])),
        d.draw(st.sampled_from(JUNK + [[0], [0, 1], [5]]))),
    lambda sd, d: sd["param_groups"].pop(),
    lambda sd, d: sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0])),
]


@SETTINGS
@given(st.data())
def test_fuzzed_state_dicts_load_or_change_nothing(data):
    sd = copy.deepcopy(_valid_state_dict())
    for mutate in data.draw(st.lists(st.sampled_from(_MUTATIONS), min_size=1, max_size=3)):
        try:
            mutate(sd, data)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            pass  # the mutation did not apply to what an earlier one left
    params = [np.arange(4.0), np.arange(3.0).reshape(3, 1)]
    opt = fastopt.Adam([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.1}], amsgrad=True)
    opt.step([np.ones(4), np.ones((3, 1))])
    before_state = copy.deepcopy(opt.state)
    before_groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    try:
        opt.load_state_dict(sd)
    except (TypeError, ValueError):
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before_groups
        assert opt.state.keys() == before_state.keys()
        for i in before_state:
            for k, v in before_state[i].items():
                np.testing.assert_array_equal(opt.state[i][k], v)
        return
    # It loaded: the optimizer must still step cleanly.
    opt.step([np.ones(4), np.ones((3, 1))])
    for p in params:
        assert p.dtype == np.float64
