"""bfloat16 parameters: float32 math in the kernel, rounded write-back.

Every optimizer and flag set, with and without a float32 master copy and
stochastic rounding, against the NumPy oracle bit for bit on both CPU
targets; stochastic rounding is unbiased and reproducible; state dicts
resume exactly; bad input is refused with nothing changed. (The CUDA loops
are checked against the CPU's under the simulator by
``tests/test_state_dtype_cuda.py``.)
"""

import numpy as np
import pytest

import reference as R
import fastopt
from fastopt.kernels import codecs

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (fastopt[lowp])")
BF16 = ml_dtypes.bfloat16

# (optimizer, oracle init, oracle step, oracle state name -> fastopt key, hyperparameters)
CASES = {
    "sgd": ("SGD", None, R.sgd_step, {}, dict(lr=0.05, weight_decay=0.01)),
    "sgd_nesterov": ("SGD", None, R.sgd_step, {"b": "momentum_buffer"},
                     dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    "adagrad": ("Adagrad", R.adagrad_init, R.adagrad_step, {"s": "sum"},
                dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    "adam_amsgrad": ("Adam", R.adam_init, R.adam_step,
                     {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq"},
                     dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    "adamw": ("AdamW", R.adam_init, R.adam_step, {"m": "exp_avg", "v": "exp_avg_sq"},
              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
}
STEPS = 4


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(BF16)
    grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 1, n)).astype(BF16)
             for _ in range(STEPS)]
    return p, grads


def _options(cls, master, stochastic):
    options = {"master_weights": master}
    if cls != "SGD":
        options.update(stochastic_rounding=stochastic, rounding_seed=12345)
    return options


# SGD keeps no step count to draw a new stream from: it rounds to nearest.
SETTINGS = [(case, master, stochastic) for case in CASES for master in (False, True)
            for stochastic in (False, True) if not (stochastic and CASES[case][0] == "SGD")]


@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("case, master, stochastic", SETTINGS)
def test_class_matches_oracle_bit_for_bit(case, master, stochastic, target):
    cls, init, step, names, hp = CASES[case]
    n = 3001
    p0, grads = _data(n)
    p = p0.copy()
    opt = getattr(fastopt, cls)([p], target=target, **_options(cls, master, stochastic),
                                **{k: v for k, v in hp.items() if k != "decoupled_weight_decay"})
    want = p0.copy()
    state = {} if init is None else init(p0.astype(np.float32), **hp)
    want_master = p0.astype(np.float32) if master else None
    for g in grads:
        opt.step([g])
        want, state, want_master = R.bf16_param_step(step, want, g, state, want_master,
                                                     stochastic, 12345, **hp)
    # The steps after the first are replayed (kernel arguments kept); one more, by hand.
    assert opt._replay.run(opt, [grads[0]])
    want, state, want_master = R.bf16_param_step(step, want, grads[0], state, want_master,
                                                 stochastic, 12345, **hp)
    assert p.dtype == BF16
    np.testing.assert_array_equal(p.view(np.uint16), want.view(np.uint16))
    got = opt.state[0]
    for key, ours in names.items():
        assert got[ours].dtype == np.float32
        np.testing.assert_array_equal(got[ours], state[key], err_msg=ours)
    if master:
        np.testing.assert_array_equal(got["master"], want_master)
    else:
        assert "master" not in got


def test_parallel_size_and_timed_choice_agree_with_serial():
    """Above the parallel threshold (kernel chosen by timing), stochastic
    rounding gives the serial kernel's bits: the random bits follow the index."""
    n = 70_001
    p0, grads = _data(n, seed=1)
    ps = [p0.copy() for _ in range(3)]
    opts = [fastopt.Adam([p], lr=1e-3, stochastic_rounding=True, master_weights=True, target=t)
            for p, t in zip(ps, ("serial", "parallel", None))]
    for g in grads:
        for opt in opts:
            opt.step([g])
    for p, opt in zip(ps[1:], opts[1:]):
        np.testing.assert_array_equal(p.view(np.uint16), ps[0].view(np.uint16))
        np.testing.assert_array_equal(opt.state[0]["master"], opts[0].state[0]["master"])
    # Replayed through the timed choice, the seed reached the kernel as a
    # uint32: nothing was compiled but the declared signature.
    from fastopt.kernels.cpu import KERNELS
    from fastopt.kernels.spec import signature
    for loop in KERNELS["adam_p16m"].values():
        assert set(loop.signatures) <= {signature("adam_p16m", "float32")}


@pytest.mark.parametrize("value", [1.0 + 2.0**-9 + 2.0**-12, -3.0e-3, 7.1e-30, 123.456, 2.0**-130])
@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_stochastic_rounding_is_unbiased(value, seed):
    """The mean of 1e6 rounded casts of one float32 is within 1e-3 relative
    of it (rounding up with probability equal to the dropped fraction)."""
    x = np.full(1_000_000, value, np.float32)
    bits = R.to_bf16_stochastic(x, seed)
    rounded = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert len(np.unique(rounded)) <= 2
    assert abs(rounded.mean() / np.float64(x[0]) - 1) < 1e-3


def test_codec_matches_the_oracle_and_keeps_specials():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 2000),
                        np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 3.4028235e38,
                                  1e-45], np.float32)]).astype(np.float32)
    seed = 987654321
    got = np.array([codecs.bf16_encode_stochastic(v, np.uint32(seed), i) for i, v in enumerate(x)],
                   np.uint16)
    np.testing.assert_array_equal(got, R.to_bf16_stochastic(x, seed))
    back = (got.astype(np.uint32) << 16).view(np.float32)
    finite = np.isfinite(x)
    assert np.isnan(back[np.isnan(x)]).all()
    np.testing.assert_array_equal(back[np.isinf(x)], x[np.isinf(x)])
    lower = (x[finite].view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.all((back[finite] == lower) | (np.abs(back[finite]) >= np.abs(lower)))


def test_stochastic_rounding_lets_small_updates_through():
    """Updates far below half a bfloat16 step at 1.0: rounding to nearest
    never moves the parameter; stochastic rounding follows float32 on average."""
    n, steps, lr = 20_000, 300, 1e-4
    g = np.ones(n, BF16)
    moved = {}
    for stochastic in (False, True):
        p = np.ones(n, BF16)
        opt = fastopt.Adam([p], lr=lr, stochastic_rounding=stochastic)
        for _ in range(steps):
            opt.step([g])
        moved[stochastic] = 1.0 - p.astype(np.float64).mean()
    assert moved[False] == 0.0
    assert abs(moved[True] / (steps * lr) - 1) < 0.05


def test_same_seed_repeats_and_other_seed_differs():
    p0, grads = _data(5000, seed=2)
    runs = []
    for seed in (7, 7, 8):
        p = p0.copy()
        opt = fastopt.AdamW([p], stochastic_rounding=True, rounding_seed=seed)
        for g in grads:
            opt.step([g])
        runs.append(p.view(np.uint16).copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("master", [False, True])
def test_state_dict_resumes_bit_for_bit(master):
    p0, grads = _data(4097, seed=4)
    a, b = p0.copy(), p0.copy()
    kw = dict(lr=1e-2, stochastic_rounding=True, master_weights=master)
    opt = fastopt.Adam([a], **kw)
    for g in grads[:2]:
        opt.step([g])
    b[...] = a
    other = fastopt.Adam([b], **kw)
    other.load_state_dict(opt.state_dict(to_host=True))
    assert ("master" in other.state[0]) == master
    for g in grads[2:]:
        opt.step([g])
        other.step([g])
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_master_weights_switched_on_and_off():
    p, grads = _data(100, seed=5)
    opt = fastopt.Adam([p], lr=1e-2)
    opt.step([grads[0]])
    assert "master" not in opt.state[0]
    opt.param_groups[0]["master_weights"] = True
    opt.step([grads[1]])
    assert opt.state[0]["master"].dtype == np.float32
    opt.param_groups[0]["master_weights"] = False
    opt.step([grads[2]])
    assert "master" not in opt.state[0]


def test_clipping_and_check_finite_take_bfloat16_gradients():
    p = np.zeros(3, BF16)
    opt = fastopt.SGD([p], lr=1.0)
    assert opt.step([np.array([1, np.nan, 2], BF16)], check_finite=True) is False
    assert not p.astype(np.float32).any()
    opt.step([np.array([3, 4, 0], BF16)], max_grad_norm=1.0)
    assert opt.last_grad_norm == 5.0
    np.testing.assert_array_equal(p.astype(np.float32), np.array([-0.6, -0.8, 0], BF16).astype(np.float32))


def _unchanged(p, before):
    np.testing.assert_array_equal(p.view(np.uint16), before.view(np.uint16))


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8", "int4", "float64"])
def test_reduced_state_on_bfloat16_parameters_is_refused(state_dtype):
    p, grads = _data(5000)
    before = p.copy()
    with pytest.raises(ValueError, match="bfloat16 parameters keep float32 state"):
        fastopt.Adam([p], state_dtype=state_dtype).step([grads[0]])
    _unchanged(p, before)


def test_bad_input_is_refused_with_nothing_changed():
    p, grads = _data(10)
    before = p.copy()
    opt = fastopt.Adam([p])
    with pytest.raises(TypeError, match="dtype"):
        opt.step([grads[0].astype(np.float32)])  # a float32 gradient for a bfloat16 parameter
    with pytest.raises(TypeError, match="dtype"):
        fastopt.Adam([np.zeros(10, np.float32)]).step([grads[0]])
    _unchanged(p, before)
    assert opt.state == {}
    for bad, error in ((-1, ValueError), (2**32, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="rounding_seed"):
            fastopt.Adam([p], rounding_seed=bad)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        fastopt.SGD([p], stochastic_rounding=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastopt.functional.adam(p, grads[0], np.zeros(10, np.float32), np.zeros(10, np.float32),
                                step=1)
    with pytest.raises(TypeError, match="master_weights"):
        fastopt.functional.sgd(np.zeros(3), np.zeros(3), master_weights=True)
    with pytest.raises(TypeError, match="float32, float64 or bfloat16"):
        fastopt.Adam([np.zeros(3, np.float16)])
    swapped = p.astype(p.dtype.newbyteorder(">"))  # bfloat16 too, its bytes the other way
    with pytest.raises(TypeError, match="non-native byte order"):
        fastopt.SGD([swapped])
    _unchanged(p, before)



@pytest.mark.parametrize("how", ["None", "removed"])
def test_a_master_copy_set_to_none_or_removed_is_made_again(how):
    # set to None it was silently left out: the steps ran without a master copy
    p = np.linspace(-1, 1, 64).astype(ml_dtypes.bfloat16)
    q = p.copy()
    opt = fastopt.Adam([p], lr=1e-3, master_weights=True)
    fresh = fastopt.Adam([q], lr=1e-3, master_weights=True)
    g = np.ones(64, ml_dtypes.bfloat16)
    opt.step([g])
    fresh.step([g])
    if how == "None":
        opt.state[0]["master"] = None
    else:
        del opt.state[0]["master"]
    fresh.state[0]["master"] = q.astype(np.float32)  # what a new copy is made from
    opt.step([g])
    fresh.step([g])
    assert opt.state[0]["master"] is not None
    np.testing.assert_array_equal(opt.state[0]["master"], fresh.state[0]["master"])
    np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))


def test_a_byte_swapped_bfloat16_gradient_is_named_so():
    # (it was "dtype >V2")
    opt = fastopt.Adam([np.ones(3, ml_dtypes.bfloat16)])
    swapped = np.ones(3, ml_dtypes.bfloat16).astype(np.dtype(ml_dtypes.bfloat16).newbyteorder())
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype bfloat16 in non-native byte order"):
        opt.step([swapped])


def test_a_master_copy_loaded_into_a_float32_parameters_optimizer_says_why_it_is_refused():
    # (it said only "unknown key(s) ['master']")
    p = np.ones(8, ml_dtypes.bfloat16)
    opt = fastopt.Adam([p], lr=1e-3, master_weights=True)
    opt.step([np.ones(8, ml_dtypes.bfloat16)])
    other = fastopt.Adam([np.ones(8, np.float32)], lr=1e-3)
    with pytest.raises(ValueError, match="master copy .* bfloat16 parameters only.*float32"):
        other.load_state_dict(opt.state_dict())
    assert other.state == {}
