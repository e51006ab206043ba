"""Bad input gets a TypeError or ValueError naming the argument, and nothing changes."""

import numpy as np
import pytest

import fastopt
import fastopt.functional as F


def snapshot(*arrays):
    return [a.copy() for a in arrays]


def assert_unchanged(arrays, before):
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


def adam_args(n=5, dtype=np.float64):
    p = np.arange(n, dtype=dtype)
    return p, np.ones(n, dtype), np.full(n, 0.5, dtype), np.full(n, 0.25, dtype), np.full(n, 2.0, dtype)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr=float("inf")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(amsgrad=1), TypeError, "amsgrad"),
    (dict(step=0), ValueError, "step"),
    (dict(step=1.5), TypeError, "step"),
    (dict(target="gpu"), ValueError, "target"),
    (dict(target=np.array("serial")), TypeError, "target"),  # compares equal to "serial"
])
def test_functional_adam_bad_hyperparameters(kwargs, exc, match):
    arrays = adam_args()
    before = snapshot(*arrays)
    kwargs = {"step": 1, **kwargs}
    with pytest.raises(exc, match=match):
        F.adam(*arrays, amsgrad=kwargs.pop("amsgrad", True), **kwargs)
    assert_unchanged(arrays, before)


@pytest.mark.parametrize("which,bad,exc,match", [
    (0, np.arange(5), TypeError, "param.*float32 or float64"),
    (0, np.arange(5, dtype=np.float16), TypeError, "param"),
    (0, [0.0, 1, 2, 3, 4], TypeError, "param"),
    (1, np.ones(5, np.float32), TypeError, "grad.*dtype"),
    (1, np.ones(6), ValueError, "grad.*shape"),
    (1, np.ones((5, 1)), ValueError, "grad.*shape"),
    (2, np.ones(4), ValueError, "exp_avg.*shape"),
    (3, np.ones(5, np.float32), TypeError, "exp_avg_sq.*dtype"),
    (4, None, ValueError, "max_exp_avg_sq"),
    (0, np.ones(10)[::2], ValueError, "param.*C-contiguous"),
    (2, np.ones(10)[::2], ValueError, "exp_avg.*C-contiguous"),
])
def test_functional_adam_bad_arrays(which, bad, exc, match):
    arrays = list(adam_args())
    before = snapshot(*arrays)
    original = list(arrays)
    arrays[which] = bad
    with pytest.raises(exc, match=match):
        F.adam(*arrays, step=1, amsgrad=True)
    assert_unchanged(original, before)


def test_read_only_param_refused():
    p, g, m, v, _ = adam_args()
    p.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        F.adam(p, g, m, v, step=1)


def test_aliased_arrays_refused():
    buf = np.zeros(10)
    p, m = buf[:6], buf[4:]  # overlap
    g, v = np.ones(6), np.zeros(6)
    with pytest.raises(ValueError, match="share memory"):
        F.adam(p, g, m[:6], v, step=1)
    with pytest.raises(ValueError, match="share memory"):
        F.sgd(p, p, lr=0.1)


def test_sgd_rules():
    p, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="nesterov"):
        F.sgd(p, g, np.zeros(3), momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum_buffer"):
        F.sgd(p, g, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov"):
        fastopt.SGD([p], nesterov=True)
    np.testing.assert_array_equal(p, 0)


@pytest.mark.parametrize("cls,kwargs,match", [
    (fastopt.SGD, dict(lr=-1), "lr"),
    (fastopt.SGD, dict(momentum=-0.5), "momentum"),
    (fastopt.SGD, dict(weight_decay=-1), "weight_decay"),
    (fastopt.Adagrad, dict(lr_decay=-1), "lr_decay"),
    (fastopt.Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"),
    (fastopt.Adagrad, dict(eps=-1), "eps"),
    (fastopt.Adam, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (fastopt.AdamW, dict(eps=float("nan")), "eps"),
    (fastopt.Adam, dict(target="cpu"), "target"),
    (fastopt.Adam, dict(target=np.array(["parallel"])), "target"),
    (fastopt.SGD, dict(target=np.array("serial")), "target"),
])
def test_class_bad_hyperparameters(cls, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        cls([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("params,exc,match", [
    ([np.arange(3)], TypeError, r"params\[0\].*float32, float64 or bfloat16"),
    ([np.zeros(3), np.arange(3.0)[::-1]], ValueError, r"params\[1\].*C-contiguous"),
    ([], ValueError, "empty"),
    (np.zeros(3), TypeError, "single array"),
    (5, TypeError, "params"),
    ([{"params": [np.zeros(2)]}, np.zeros(2)], TypeError, "mixes"),
    ([{"params": [np.zeros(2)], "momentun": 0.9}], ValueError, "momentun"),
    ([{"lr": 0.1}], ValueError, "params"),
])
def test_bad_params_refused_at_construction(params, exc, match):
    with pytest.raises(exc, match=match):
        fastopt.SGD(params)


def test_param_listed_twice_refused():
    w = np.zeros(3)
    with pytest.raises(ValueError, match=r"params\[1\].*more than once"):
        fastopt.Adam([w, w])
    with pytest.raises(ValueError, match="more than once"):
        fastopt.Adam([{"params": [w]}, {"params": [w]}])
    base = np.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam([base[:6], base[5:]])


def make_opt():
    params = [np.arange(4.0), np.arange(3.0)]
    opt = fastopt.Adam(params, lr=0.1)
    opt.step([np.ones(4), np.ones(3)])
    return params, opt


@pytest.mark.parametrize("grads,exc,match", [
    ([np.ones(4)], ValueError, "grads has 1 entries"),
    ([np.ones(4), np.ones(4)], ValueError, r"grads\[1\].*shape"),
    ([np.ones(4), np.ones(3, np.float32)], TypeError, r"grads\[1\].*dtype"),
    ([np.ones(4), [1.0, 1.0, 1.0]], TypeError, r"grads\[1\]"),
    (np.ones(4), TypeError, "grads must be a sequence"),
])
def test_step_bad_grads_changes_nothing(grads, exc, match):
    params, opt = make_opt()
    before = snapshot(*params) + snapshot(*(opt.state[i]["exp_avg"] for i in range(2)))
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_unchanged(list(params) + [opt.state[i]["exp_avg"] for i in range(2)], before)
    assert opt.state[0]["step"] == 1


def test_step_bad_hyperparameter_set_between_steps_changes_nothing():
    params, opt = make_opt()
    before = snapshot(*params)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.ones(4), np.ones(3)])
    assert_unchanged(params, before)
    assert opt.state[0]["step"] == 1


def test_grad_aliasing_its_param_refused():
    params, opt = make_opt()
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory"):
        opt.step([params[0], np.ones(3)])


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda sd: sd.pop("state"), ValueError, "exactly the keys"),
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), ValueError, "parameters"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros(5)), ValueError, "shape"),
    (lambda sd: sd["state"][0].update(exp_avg="abc"), TypeError, "exp_avg"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros(4, complex)), TypeError, "floating"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros(4, np.int64)), TypeError, "floating"),
    (lambda sd: sd["state"][0].update(step=True), TypeError, "step"),
    (lambda sd: sd["state"][0].pop("exp_avg_sq"), ValueError, "exp_avg_sq"),
    (lambda sd: sd["state"][0].update(step=-1), ValueError, "step"),
    (lambda sd: sd["state"][0].update(bogus=1), ValueError, "bogus"),
    (lambda sd: sd["state"].update({7: {}}), ValueError, "7"),
    (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "lr"),
])
def test_bad_state_dict_changes_nothing(mutate, exc, match):
    params, opt = make_opt()
    sd = opt.state_dict()
    sd = {"state": {k: dict(v) for k, v in sd["state"].items()},
          "param_groups": [dict(g, params=list(g["params"])) for g in sd["param_groups"]]}
    mutate(sd)
    before_state = {k: {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
                    for k, v in opt.state.items()}
    before_groups = [dict(g) for g in opt.param_groups]
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    assert [dict(g) for g in opt.param_groups] == before_groups
    for k, v in before_state.items():
        for kk, vv in v.items():
            np.testing.assert_array_equal(opt.state[k][kk], vv)


def test_amsgrad_state_without_its_maximum_refused():
    w = np.zeros(3)
    opt = fastopt.Adam([w], amsgrad=True)
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    del sd["state"][0]["max_exp_avg_sq"]
    fresh = fastopt.Adam([np.zeros(3)], amsgrad=True)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        fresh.load_state_dict(sd)
    assert fresh.state == {}


def test_float32_state_loads_into_float64_params_cast():
    w = np.zeros(3, np.float32)
    opt = fastopt.Adam([w])
    opt.step([np.ones(3, np.float32)])
    other = fastopt.Adam([np.zeros(3)])
    other.load_state_dict(opt.state_dict())
    assert other.state[0]["exp_avg"].dtype == np.float64


def test_numpy_scalar_gradient_for_a_0d_parameter():
    p = np.array(1.0)
    fastopt.SGD([p], lr=0.5).step([np.float64(2.0)])
    assert p == 0.0
    with pytest.raises(TypeError, match="dtype"):
        fastopt.SGD([np.array(1.0)]).step([np.float32(2.0)])
    with pytest.raises(TypeError, match="grads"):
        fastopt.SGD([np.zeros(2)]).step([np.float64(2.0)])


@pytest.mark.parametrize("make", [
    lambda p: fastopt.SGD([p], lr=1e39),
    lambda p: fastopt.SGD([p], lr=0.1, momentum=1e39),
    lambda p: fastopt.SGD([p], lr=0.1, weight_decay=1e39),
    lambda p: fastopt.Adagrad([p], lr=1e39),
    lambda p: fastopt.Adagrad([p], eps=1e39),
    lambda p: fastopt.Adagrad([p], initial_accumulator_value=1e39),
    lambda p: fastopt.Adam([p], lr=1e33, betas=(0.9999999, 0.999)),  # the step size
    lambda p: fastopt.AdamW([p], lr=1e20, weight_decay=1e20),  # 1 - lr * weight_decay
    lambda p: fastopt.Adam([p], eps=1e39),
])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # (Adagrad's sum, made at once)
def test_float32_scalars_beyond_float32s_range_are_refused_like_torch(make):
    # finite in float64, infinite once cast: the parameters became -inf (torch
    # refuses: "value cannot be converted to type float without overflow")
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="beyond float32's range"):
        make(p).step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p, 1)


def test_float32_range_is_checked_by_the_functional_api_and_a_schedules_new_lr():
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"param: lr is 1e\+39"):
        F.sgd(p, np.ones(3, np.float32), lr=1e39)
    opt = fastopt.SGD([p], lr=0.1)
    for _ in range(3):  # replayed from the second step
        opt.step([np.ones(3, np.float32)])
    before = p.copy()
    opt.param_groups[0]["lr"] = 1e39
    with pytest.raises(ValueError, match="beyond float32's range"):
        opt.step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p, before)
    q = np.ones(3)  # float64 holds it
    fastopt.SGD([q], lr=1e39).step([np.ones(3)])
    assert q[0] == -1e39


@pytest.mark.parametrize("key,value,cls", [("weight_decay ", 0.5, fastopt.SGD),
                                           ("momentun", 0.9, fastopt.SGD),
                                           ("stochastic_rounding", True, fastopt.SGD),
                                           ("amsgrad_", True, fastopt.Adam)])
def test_an_unknown_key_added_to_a_group_is_refused_as_the_constructor_refuses_it(key, value, cls):
    # a typo set by hand had no effect and no error (and made a later
    # add_param_group fail, naming the old group)
    p = np.ones(3)
    opt = cls([p], lr=0.1)
    opt.step([np.ones(3)])  # replayed from here on
    opt.step([np.ones(3)])
    opt.param_groups[0][key] = value
    before = p.copy()
    with pytest.raises(ValueError, match=rf"param_groups\[0\]: unknown hyperparameter.*{key}"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p, before)


def test_a_group_whose_params_key_was_removed_is_refused_clearly():
    # (the replay read group["params"]: a KeyError)
    opt = fastopt.SGD([np.ones(3)], lr=0.1)
    for _ in range(2):
        opt.step([np.ones(3)])
    del opt.param_groups[0]["params"]
    with pytest.raises(ValueError, match="'params'"):
        opt.step([np.ones(3)])


@pytest.mark.parametrize("where", [0, 7, 19])
def test_many_parameters_overlapping_anywhere_are_refused(where):
    # Beyond a few arrays the check sorts their byte ranges (every pair was
    # compared: most of a minute to build an optimizer of 800 groups).
    buf = np.zeros(200)
    params = [buf[10 * i:10 * i + 10] for i in range(20)]
    fastopt.Adam(params[::-1], lr=0.1)  # apart: accepted, in any order
    overlapping = params[:where] + [buf[10 * where + 5:10 * where + 12]] + params[where:]
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam(overlapping[::-1], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam([{"params": [p]} for p in overlapping], lr=0.1)
    inside = params + [buf[0:200]]  # one range holding all the others
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam(inside, lr=0.1)
