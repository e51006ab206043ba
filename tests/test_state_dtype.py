"""Reduced-precision optimizer state (``state_dtype``) against the NumPy oracle.

Every optimizer, flag set and state dtype, on sizes that are and are not a
multiple of the block and under the block-wise minimum: the parameters and
the stored state (codes, absmax, bfloat16 bits) match ``reference.py`` bit
for bit on both CPU targets. Then the codec tables, state dicts (exact
resume, float32 in, dequantized out) and bad input.
"""

import os
import pickle
import warnings

import numpy as np
import pytest
from numba import njit, prange

import reference as R
import fastopt
from fastopt import _state_dtype
from fastopt.kernels import codecs

try:
    import ml_dtypes
except ImportError:  # the "lowp" extra: bfloat16 cases skip without it
    ml_dtypes = None


def needs_ml_dtypes(state_dtype="bfloat16"):
    if state_dtype == "bfloat16" and ml_dtypes is None:
        pytest.skip("ml_dtypes is not installed (pip install 'fastopt[lowp]')")

STATE_DTYPES = ["bfloat16", "int8", "int4"]
SIZES = [4096 + 137, 5000, 300]  # not a multiple of either block (odd, for int4); under 4096
STEPS = 3

# (optimizer, oracle step, oracle name -> (fastopt key, signed map), hyperparameters)
CASES = {
    "sgd_momentum": ("SGD", R.sgd_step, {"b": ("momentum_buffer", True)},
                     dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "sgd_nesterov": ("SGD", R.sgd_step, {"b": ("momentum_buffer", True)},
                     dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    "adagrad": ("Adagrad", R.adagrad_step, {"s": ("sum", False)},
                dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    "adam": ("Adam", R.adam_step, {"m": ("exp_avg", True), "v": ("exp_avg_sq", False)},
             dict(lr=0.01, weight_decay=0.01)),
    "adam_amsgrad_maximize": ("Adam", R.adam_step, {"m": ("exp_avg", True), "v": ("exp_avg_sq", False),
                                                     "vmax": ("max_exp_avg_sq", False)},
                              dict(lr=0.01, amsgrad=True, maximize=True)),
    "adamw": ("AdamW", R.adam_step, {"m": ("exp_avg", True), "v": ("exp_avg_sq", False)},
              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    # the usual-case loop with the maximum (no maximize, no L2 term, beta1 > 0.5)
    "adamw_amsgrad": ("AdamW", R.adam_step, {"m": ("exp_avg", True), "v": ("exp_avg_sq", False),
                                             "vmax": ("max_exp_avg_sq", False)},
                      dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
}


def _oracle_init(name, p, hp, signs, state_dtype):
    if name.startswith("sgd"):
        return {}
    state = R.adagrad_init(p, **hp) if name == "adagrad" else R.adam_init(p, **hp)
    blockwise = state_dtype in R.QUANT_BLOCK and p.size >= R.QUANT_MIN_SIZE
    for key, signed in signs.items():
        if key in state and blockwise:
            state[key] = R.quantize(state[key].reshape(-1), state_dtype, signed)
        elif key in state and state_dtype == "bfloat16":
            state[key] = R.to_bf16(state[key])
    return state


def _stored(state, key, state_dtype, n):
    """A fastopt state array as the oracle holds it."""
    if state.get("state_dtype") in ("int8", "int4"):
        return state[key], state[key + "_absmax"]
    a = state[key]
    return a.astype(np.float32) if a.dtype != np.float32 else a


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 1, n)).astype(np.float32)
             for _ in range(STEPS)]
    return p, grads


@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_class_matches_oracle_bit_for_bit(case, state_dtype, n, target):
    needs_ml_dtypes(state_dtype)
    cls, step, names, hp = CASES[case]
    p0, grads = _data(n)
    p = p0.copy()
    opt = getattr(fastopt, cls)([p], target=target, state_dtype=state_dtype,
                                **{k: v for k, v in hp.items() if k != "decoupled_weight_decay"
                                   or cls != "AdamW"})
    signs = {k: signed for k, (_, signed) in names.items()}
    want_p, state = p0.copy(), _oracle_init(case, p0, hp, signs, state_dtype)
    for g in grads:
        opt.step([g])
        want_p, state = R.stored_step(step, want_p, g, state, signs, state_dtype, **hp)
    np.testing.assert_array_equal(p, want_p)
    got = opt.state[0]
    blockwise = state_dtype != "bfloat16" and n >= 4096
    assert got.get("state_dtype") == (state_dtype if blockwise or state_dtype == "bfloat16" else None)
    for key, (ours, _) in names.items():
        if key not in state:
            continue
        have = _stored(got, ours, state_dtype, n)
        if blockwise:
            np.testing.assert_array_equal(have[0], state[key][0], err_msg=f"{ours} codes")
            np.testing.assert_array_equal(have[1], state[key][1], err_msg=f"{ours} absmax")
        else:
            np.testing.assert_array_equal(have, state[key], err_msg=ours)


def test_maps_are_the_oracles():
    for kind in ("int8", "int4"):
        first, second = codecs.MAP_NAMES[kind]
        want_first, want_second = R.quant_maps(kind)
        np.testing.assert_array_equal(codecs.MAPS[first], want_first)
        np.testing.assert_array_equal(codecs.MAPS[second], want_second)
        assert len(codecs.MAPS[first]) == (256 if kind == "int8" else 16)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_matches_oracle_on_edges(kind, signed):
    """Midpoints, their neighbours, zeros of both signs, tiny, huge, inf and NaN blocks."""
    table = R.quant_maps(kind)[0 if signed else 1]
    mids = ((table[:-1].astype(np.float64) + table[1:]) / 2).astype(np.float32)
    x = np.concatenate([mids, np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2)),
                        [0.0, -0.0, 1.0, -1.0, 1e-30, 3e38, -1e-45]]).astype(np.float32)
    if not signed:
        x = np.abs(x)
    x = np.concatenate([x, np.zeros(256, np.float32), [np.nan, 1, 2], np.zeros(253, np.float32),
                        [np.inf, 1.0]]).astype(np.float32)
    p = np.zeros(x.size, np.float32)
    got = _state_dtype.encode(kind, "exp_avg" if signed else "exp_avg_sq", x, p)
    codes, absmax = R.quantize(x, kind, signed)
    key = "exp_avg" if signed else "exp_avg_sq"
    np.testing.assert_array_equal(got[key], codes)
    np.testing.assert_array_equal(got[key + "_absmax"], absmax)
    back = _state_dtype.decode(kind, key, got, x.shape)
    np.testing.assert_array_equal(back, R.dequantize(codes, absmax, x.size, kind, signed))


# The stores encode by arithmetic and fall back to the table look-up
# (``codecs.encode``) for a block with an element flagged near a midpoint;
# each element's arithmetic code must be the look-up's wherever it is not
# flagged. A sample of every float32 bit pattern and the neighbourhood of
# every midpoint; FASTOPT_EXHAUSTIVE=1 takes all 2**32 patterns (minutes).
ARITHMETIC_MAPS = {"signed8": ("int8", 0), "unsigned8": ("int8", 1), "signed4": ("int4", 0),
                   "linear4": ("int4", 1)}


@njit(parallel=True, error_model="numpy", boundscheck=False)
def _arithmetic_misses(bits, kind, consts, qmaps, off, size, qluts, loff):
    """(elements whose unflagged arithmetic code differs from the look-up's,
    elements flagged) among the float32s with these bits."""
    gaps, scales, h0, half = consts
    top = np.float32(size - 1)
    missed = np.zeros(bits.size, np.bool_)
    flagged = np.zeros(bits.size, np.bool_)
    for k in prange(bits.size):
        n = codecs.bits_f32(bits[k])
        if kind == 0:
            c, close = codecs._signed_code(n, gaps, scales, h0, half)
        elif kind == 1:
            c, close = codecs._unsigned_code(n, gaps, scales)
        else:
            c, close = codecs._linear_code(n), np.float32(0)
        flagged[k] = close != 0
        missed[k] = close == 0 and np.int32(c if n == n else top) != codecs.encode(
            n, np.float32(1), qmaps, off, size, qluts, loff)
    return missed.sum(), flagged.sum()


@pytest.mark.parametrize("name", ARITHMETIC_MAPS)
def test_arithmetic_encoding_is_the_lookup(name):
    kind, second = ARITHMETIC_MAPS[name]
    size = 256 if kind == "int8" else 16
    off, loff = (2 * size, 65536) if second else (0, 0)
    qmaps, qluts = codecs.tables(kind)
    mids = codecs.MIDPOINTS[name][:-1]
    near = (mids.view(np.uint32)[:, None].astype(np.int64) + np.arange(-64, 65)).reshape(-1)
    near = np.concatenate([near, near ^ 0x80000000]) & 0xFFFFFFFF  # both signs
    how = {"signed8": (0, codecs._SIGNED8), "unsigned8": (1, codecs._UNSIGNED8),
           "signed4": (0, codecs._SIGNED4), "linear4": (2, codecs._SIGNED4)}[name]
    exhaustive = os.environ.get("FASTOPT_EXHAUSTIVE") == "1"
    stride, chunk = (1, 1 << 28) if exhaustive else (4099, 1 << 32)
    missed = flagged = 0
    samples = [near.astype(np.uint32)]
    samples += (np.arange(start, min(start + chunk, 1 << 32), stride, dtype=np.uint64).astype(np.uint32)
                for start in range(0, 1 << 32, chunk))
    for bits in samples:
        m, f = _arithmetic_misses(bits, how[0], how[1], qmaps, off, size, qluts, loff)
        missed += m
        flagged += f
    assert missed == 0
    if name != "linear4":  # (its codes are exact: nothing is flagged)
        assert 0 < flagged
    else:
        assert flagged == 0


def test_flagged_blocks_are_encoded_exactly():
    """A block whose element sits at a midpoint is encoded by the look-up:
    the same codes as the oracle, its other elements included; int4 with
    an odd tail."""
    rng = np.random.default_rng(5)
    for kind, signed in [("int8", True), ("int8", False), ("int4", True), ("int4", False)]:
        table = R.quant_maps(kind)[0 if signed else 1]
        mids = ((table[:-1].astype(np.float64) + table[1:]) / 2).astype(np.float32)
        x = rng.standard_normal(4096 + 129).astype(np.float32)
        x = x if signed else np.abs(x)
        block = codecs.BLOCK[kind]
        x[::block] = 1.0  # each block's absmax is 1: its elements are their own codes' inputs
        x[3::block] = mids[rng.integers(0, mids.size, x[3::block].size)]
        key = "exp_avg" if signed else "exp_avg_sq"
        got = _state_dtype.encode(kind, key, x, np.zeros(x.size, np.float32))
        codes, absmax = R.quantize(x, kind, signed)
        np.testing.assert_array_equal(got[key], codes, err_msg=f"{kind} signed={signed}")
        np.testing.assert_array_equal(got[key + "_absmax"], absmax)


def test_bf16_encode_rounds_to_nearest_even():
    needs_ml_dtypes()
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([bits.view(np.float32), np.float32([np.inf, -np.inf, 0, -0.0, 3.4e38])])
    got = _state_dtype.encode("bfloat16", "exp_avg", x, np.zeros(x.size, np.float32))["exp_avg"]
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(got[nan].astype(np.float32)).all()


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_state_bytes_per_parameter(state_dtype):
    needs_ml_dtypes(state_dtype)
    n = 1 << 16
    opt = fastopt.Adam([np.zeros(n, np.float32)], state_dtype=state_dtype)
    opt.step([np.ones(n, np.float32)])
    nbytes = sum(v.nbytes for v in opt.state[0].values() if isinstance(v, np.ndarray))
    assert nbytes / n <= {"bfloat16": 4.0, "int8": 2.04, "int4": 1.07}[state_dtype]


# --- state dicts ----------------------------------------------------------------------

def _trained(state_dtype, n=5000, steps=2, **hp):
    p, grads = _data(n, seed=3)
    opt = fastopt.AdamW([p], lr=0.01, state_dtype=state_dtype, amsgrad=True, **hp)
    for g in grads[:steps]:
        opt.step([g])
    return p, opt


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_resume_is_bit_identical(state_dtype):
    needs_ml_dtypes(state_dtype)
    p, opt = _trained(state_dtype)
    saved = pickle.loads(pickle.dumps(opt.state_dict(to_host=True)))
    q = p.copy()
    other = fastopt.AdamW([q], lr=0.01, state_dtype=state_dtype, amsgrad=True)
    other.load_state_dict(saved)
    g = _data(p.size, seed=4)[1][0]
    opt.step([g])
    other.step([g])
    np.testing.assert_array_equal(p, q)
    for key, value in opt.state[0].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value.view(np.uint8), other.state[0][key].view(np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e21])
@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.Adagrad])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_a_non_finite_element_does_not_poison_its_block(state_dtype, cls, bad):
    """A block's scale stays finite (infinity and NaN count as the largest
    float32): an element that is NaN, or whose state overflows to infinity
    (1e21 squared), leaves its block's other elements finite, as float32
    state leaves them (they were all NaN, for good)."""
    p = np.zeros(8192, np.float32)
    opt = cls([p], lr=1e-3, state_dtype=state_dtype)
    g = np.ones(8192, np.float32)
    g[0] = bad
    opt.step([g])
    for _ in range(3):
        opt.step([np.ones(8192, np.float32)])
    assert np.isfinite(p[1:]).all()
    for key, value in opt.state[0].items():
        if key.endswith("_absmax"):
            assert np.isfinite(value).all()


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_state_loaded_in_fortran_order_is_stepped(state_dtype):
    """Saved arrays in another memory layout are copied in as the kernels
    take them: one kept in Fortran order was copied at each step, and the
    copy stepped, so the optimizer's state never moved."""
    needs_ml_dtypes(state_dtype)
    rng = np.random.default_rng(6)
    p = rng.standard_normal((64, 80)).astype(np.float32)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for _ in range(3)]
    opt = fastopt.Adam([p], lr=0.01, state_dtype=state_dtype)
    opt.step([grads[0]])
    q = p.copy()
    saved = opt.state_dict(to_host=True)
    for key, value in saved["state"][0].items():
        if isinstance(value, np.ndarray):
            saved["state"][0][key] = np.asfortranarray(value)
    other = fastopt.Adam([q], lr=0.01, state_dtype=state_dtype)
    other.load_state_dict(saved)
    for g in grads[1:]:
        opt.step([g], check_finite=True)  # the checked path, every time
        other.step([g], check_finite=True)
    np.testing.assert_array_equal(p, q)
    for key, value in opt.state[0].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value.view(np.uint8), other.state[0][key].view(np.uint8))


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_checkpoint_round_trip(state_dtype, tmp_path):
    needs_ml_dtypes(state_dtype)
    p, opt = _trained(state_dtype)
    fastopt.save(tmp_path / "c.ckpt", {"w": p}, opt)
    q = np.zeros_like(p)
    other = fastopt.AdamW([q], lr=0.01, state_dtype=state_dtype, amsgrad=True)
    fastopt.load(tmp_path / "c.ckpt", {"w": q}, other)
    g = _data(p.size, seed=5)[1][0]
    opt.step([g])
    other.step([g])
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_float_state_dict_is_stored_and_dequantized_out(state_dtype):
    needs_ml_dtypes(state_dtype)
    _, full = _trained(None)
    sd = full.state_dict()
    q = np.zeros(5000, np.float32)
    low = fastopt.AdamW([q], lr=0.01, state_dtype=state_dtype, amsgrad=True)
    low.load_state_dict(sd)
    assert low.state[0]["state_dtype"] == state_dtype
    out = low.state_dict(dequantize=True)["state"][0]
    assert "state_dtype" not in out and not any(k.endswith("_absmax") for k in out)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        a, b = out[key], sd["state"][0][key]
        assert a.dtype == np.float32 and a.shape == b.shape
        signed = key == "exp_avg"
        if state_dtype == "bfloat16":
            np.testing.assert_array_equal(a, R.to_bf16(b))
        else:
            codes, absmax = R.quantize(b, state_dtype, signed)
            np.testing.assert_array_equal(a, R.dequantize(codes, absmax, b.size, state_dtype, signed))


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_to_torch_gives_values_torch_can_step(state_dtype):
    # torch's load_state_dict takes any float tensors: stored codes or bits
    # given as tensors would be read as moments, so to_torch dequantizes.
    needs_ml_dtypes(state_dtype)
    torch = pytest.importorskip("torch")
    p, opt = _trained(state_dtype)
    out = opt.state_dict(to_torch=True)["state"][0]
    expected = opt.state_dict(dequantize=True)["state"][0]
    assert "state_dtype" not in out and not any(k.endswith("_absmax") for k in out)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert out[key].dtype == torch.float32 and tuple(out[key].shape) == p.shape
        np.testing.assert_array_equal(out[key].numpy(), expected[key])
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.AdamW([tp], lr=0.01, amsgrad=True)
    topt.load_state_dict(opt.state_dict(to_torch=True))
    tp.grad = torch.ones_like(tp)
    topt.step()  # steps from the dequantized moments
    assert torch.isfinite(tp).all()


def test_changing_state_dtype_restores_the_state():
    p, opt = _trained("int8")
    before = opt.state_dict(dequantize=True)["state"][0]["exp_avg"]
    opt.param_groups[0]["state_dtype"] = None
    opt.step([np.zeros_like(p)])
    assert opt.state[0]["exp_avg"].dtype == np.float32 and "state_dtype" not in opt.state[0]
    assert before.shape == opt.state[0]["exp_avg"].shape


# --- bad input --------------------------------------------------------------------------

def test_unknown_state_dtype_refused():
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fastopt.Adam([np.zeros(3, np.float32)], state_dtype="float16")
    with pytest.raises(TypeError, match="state_dtype must be a string"):
        fastopt.Adam([np.zeros(3, np.float32)], state_dtype=8)


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", "float32"])
def test_reduced_state_on_float64_refused_nothing_changed(state_dtype):
    """Refused when the group is made, and at the step when set later."""
    p = np.ones(5000)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\]: state_dtype"):
        fastopt.Adam([p], state_dtype=state_dtype)
    opt = fastopt.Adam([p])
    opt.param_groups[0]["state_dtype"] = state_dtype
    with pytest.raises(ValueError, match="state_dtype"):
        opt.step([np.ones(5000)])
    assert (p == 1).all() and opt.state == {}


@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.SGD, fastopt.Adagrad])
@pytest.mark.parametrize("param, state_dtype", [
    (np.zeros(10), "int8"), (np.zeros(10), "float32"), ("bfloat16", "bfloat16"),
    ("bfloat16", "int4")])
def test_added_group_with_a_state_dtype_its_params_cannot_take_is_not_added(cls, param,
                                                                             state_dtype):
    if isinstance(param, str):
        needs_ml_dtypes()
        param = np.zeros(10, ml_dtypes.bfloat16)
    opt = cls([np.zeros(10, np.float32)], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\]"):
        opt.add_param_group({"params": [param], "state_dtype": state_dtype})
    assert len(opt.param_groups) == 1 and list(opt.state) in ([], [0])
    opt.step([np.ones(10, np.float32)])  # and the optimizer steps as before


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_block_scales_refused_nothing_changed(state_dtype, bad):
    p, opt = _trained(state_dtype)
    sd = pickle.loads(pickle.dumps(opt.state_dict(to_host=True)))
    sd["state"][0]["exp_avg_sq_absmax"][3] = bad
    q = np.zeros_like(p)
    other = fastopt.AdamW([q], lr=0.01, state_dtype=state_dtype, amsgrad=True)
    with pytest.raises(ValueError, match="exp_avg_sq_absmax.*finite block scales"):
        other.load_state_dict(sd)
    assert other.state == {}


def test_wrong_block_layout_refused_nothing_changed():
    p, opt = _trained("int8")
    sd = opt.state_dict(to_host=True)
    bad = pickle.loads(pickle.dumps(sd))
    bad["state"][0]["exp_avg_absmax"] = bad["state"][0]["exp_avg_absmax"][:-1]
    q = np.zeros_like(p)
    other = fastopt.AdamW([q], lr=0.01, state_dtype="int8", amsgrad=True)
    with pytest.raises(ValueError, match="int8 layout"):
        other.load_state_dict(bad)
    assert other.state == {}
    int4 = pickle.loads(pickle.dumps(sd))
    int4["state"][0]["state_dtype"] = "int4"
    with pytest.raises(ValueError, match="int4 layout"):
        other.load_state_dict(int4)
    unknown = pickle.loads(pickle.dumps(sd))
    unknown["state"][0]["state_dtype"] = "int3"
    with pytest.raises(ValueError, match="state_dtype"):
        other.load_state_dict(unknown)
    assert other.state == {}


def test_bfloat16_bits_of_the_other_byte_order_refused_nothing_changed():
    # uint16 bits of the other byte order were viewed as this machine's: every
    # moment loaded byte-swapped (0.05 became 2e8); refused now, as such absmax is.
    needs_ml_dtypes()
    p, opt = _trained("bfloat16")
    sd = pickle.loads(pickle.dumps(opt.state_dict(to_host=True)))
    swapped = np.dtype(np.uint16).newbyteorder()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].view(np.uint16).astype(swapped)
    other = fastopt.AdamW([np.zeros_like(p)], lr=0.01, state_dtype="bfloat16", amsgrad=True)
    with pytest.raises(ValueError, match="'exp_avg' is [<>]u2"):
        other.load_state_dict(sd)
    assert other.state == {}
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].astype(np.uint16)  # native: loads
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.state[0]["exp_avg"].view(np.uint16),
                                  opt.state[0]["exp_avg"].view(np.uint16))


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match=r"fastopt\[lowp\]"):  # when the group is made
        fastopt.Adam([np.zeros(3, np.float32)], state_dtype="bfloat16")
    opt = fastopt.Adam([np.zeros(3, np.float32)])
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    with pytest.raises(ImportError, match=r"fastopt\[lowp\]"):  # or at the step
        opt.step([np.ones(3, np.float32)])


# --- functional API ---------------------------------------------------------------------

@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("fn", ["adam", "adamw", "adagrad", "sgd"])
def test_functional_matches_the_class(fn, state_dtype):
    needs_ml_dtypes(state_dtype)
    import fastopt.functional as F
    p0, grads = _data(5000, seed=7)
    p, q = p0.copy(), p0.copy()
    hp = dict(lr=0.01, momentum=0.9) if fn == "sgd" else dict(lr=0.01)
    cls = {"adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad", "sgd": "SGD"}[fn]
    opt = getattr(fastopt, cls)([q], state_dtype=state_dtype, **hp)
    keys = {"adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg", "exp_avg_sq"],
            "adagrad": ["sum"], "sgd": ["momentum_buffer"]}[fn]
    states = [F.zeros_state(p, key, state_dtype) for key in keys]
    for t, g in enumerate(grads, 1):
        extra = {"first_step": t == 1} if fn == "sgd" else {"step": t}
        getattr(F, fn)(p, g, *states, state_dtype=state_dtype, **extra, **hp)
        opt.step([g])
    np.testing.assert_array_equal(p, q)
    for key, state in zip(keys, states):
        if isinstance(state, tuple):
            np.testing.assert_array_equal(state[0], opt.state[0][key])
            np.testing.assert_array_equal(state[1], opt.state[0][key + "_absmax"])
        else:
            np.testing.assert_array_equal(state.view(np.uint16), opt.state[0][key].view(np.uint16))


def test_functional_bad_stored_state_refused_nothing_changed():
    import fastopt.functional as F
    p = np.ones(5000, np.float32)
    m = F.zeros_state(p, "exp_avg", "int8")
    v = F.zeros_state(p, "exp_avg_sq", "int8")
    with pytest.raises(TypeError, match=r"\(codes, absmax\) pair"):
        F.adam(p, np.ones_like(p), m[0], v, step=1, state_dtype="int8")
    with pytest.raises(ValueError, match="absmax must be float32"):
        F.adam(p, np.ones_like(p), m, (v[0], v[1][:-1]), step=1, state_dtype="int8")
    small = np.ones(100, np.float32)  # below the size that is block-quantized
    with pytest.raises(TypeError, match="100 elements keeps int8 state in full precision"):
        F.adam(small, np.ones_like(small), m, v, step=1, state_dtype="int8")
    assert (small == 1).all()
    with pytest.raises(ValueError, match="must be uint8"):
        F.adam(p, np.ones_like(p), m, v, step=1, state_dtype="int4")
    with pytest.raises(ValueError, match="needs float32"):
        F.adam(p.astype(np.float64), np.ones(5000), m, v, step=1, state_dtype="int8")
    for bad in (np.nan, -1.0, np.inf):  # scales the kernels never make (state dicts refuse them)
        scales = v[1].copy()
        scales[2] = bad
        with pytest.raises(ValueError, match="exp_avg_sq absmax must hold finite block scales"):
            F.adam(p, np.ones_like(p), m, (v[0], scales), step=1, state_dtype="int8")
    with warnings.catch_warnings():  # (NumPy discourages np.matrix; a user may still pass one)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = (m[0], np.asmatrix(m[1]))  # a subclass, of the wrong shape: said so
    with pytest.raises(ValueError, match=r"absmax must be float32\[20\].*got float32\[1, 20\]"):
        F.adam(p, np.ones_like(p), matrix, v, step=1, state_dtype="int8")
    assert (p == 1).all() and (m[0] == F.zeros_state(p, "exp_avg", "int8")[0]).all()


def test_asv_benchmark_runs():
    needs_ml_dtypes()
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "asv_bench"))
    from benchmarks.bench_state_dtype import StateDtype
    b = StateDtype()
    for state_dtype, most in [("float32", 8.0), ("bfloat16", 4.0), ("int8", 2.04), ("int4", 1.07)]:
        b.setup(state_dtype, 5000, "serial")
        b.time_step(state_dtype, 5000, "serial")
        assert b.track_state_bytes_per_param(state_dtype, 5000, "serial") <= most


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_amsgrad_and_state_dtype_switched_on_together(state_dtype):
    p, grads = _data(5000, seed=9)
    q = p.copy()
    opt = fastopt.Adam([p], lr=0.01)
    ref = fastopt.Adam([q], lr=0.01)
    opt.step([grads[0]])
    ref.step([grads[0]])
    opt.param_groups[0].update(amsgrad=True, state_dtype=state_dtype)
    opt.step([grads[1]])
    assert opt.state[0]["state_dtype"] == state_dtype
    assert opt.state[0]["max_exp_avg_sq_absmax"].shape == opt.state[0]["exp_avg_absmax"].shape
    # The same as converting the float state first, then stepping with amsgrad.
    ref.load_state_dict(ref.state_dict())  # (a copy of the float32 state)
    low = fastopt.Adam([q], lr=0.01, amsgrad=True, state_dtype=state_dtype)
    low.load_state_dict(ref.state_dict())
    low.step([grads[1]])
    np.testing.assert_array_equal(p, q)


def test_a_positive_second_moment_never_rounds_to_zero():
    """int8's unsigned map: a tiny positive second moment in a block of large
    ones keeps the smallest positive code. Rounded to 0 under a nonzero first
    moment, it made the step lr * m / eps (steps of ~1 with lr 1e-3)."""
    n = 8192
    g = np.ones(n, np.float32)
    g[::97] = 1e-5  # (1e-5)**2 is ~1e-10 of its block's largest second moment
    p = np.zeros(n, np.float32)
    opt = fastopt.Adam([p], lr=1e-3, state_dtype="int8")
    opt.step([g])
    before = p.copy()
    opt.step([np.zeros(n, np.float32)])  # the first moment decays, nothing feeds the second
    assert np.abs(p - before).max() < 2e-3
    codes, absmax = R.quantize(np.array([0.0, 1e-30, 1e-12, 1.0], np.float32), "int8", False)
    assert list(codes[:3]) == [0, 1, 1]


def test_ml_dtypes_bfloat16_arrays_load_as_torch_bfloat16_tensors_do():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    opt = fastopt.Adam([np.zeros(100, np.float32)], lr=0.1)
    opt.step([np.ones(100, np.float32)])
    sd = opt.state_dict(to_host=True)
    half = sd["state"][0]["exp_avg"].astype(ml_dtypes.bfloat16)
    sd["state"][0]["exp_avg"] = half
    opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], half.astype(np.float32))


def test_bfloat16_state_given_as_torch_bfloat16_tensors_loads():
    # NumPy cannot hold torch's bfloat16: np.asarray raised a bare
    # "Got unsupported ScalarType BFloat16"; the tensor's bits are the state.
    needs_ml_dtypes()
    torch = pytest.importorskip("torch")
    p, opt = _trained("bfloat16")
    sd = opt.state_dict(to_host=True)
    values = opt.state_dict(dequantize=True)["state"][0]
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        sd["state"][0][key] = torch.from_numpy(values[key]).to(torch.bfloat16)
    other = fastopt.AdamW([p.copy()], lr=0.01, state_dtype="bfloat16", amsgrad=True)
    other.load_state_dict(sd)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(other.state[0][key].view(np.uint16),
                                      opt.state[0][key].view(np.uint16))


@pytest.mark.parametrize("old, new", [("bfloat16", None), ("bfloat16", "int8"), ("int8", None),
                                      ("int4", "bfloat16"), (None, "int8")])
def test_sgd_momentum_switched_on_with_another_state_dtype(old, new):
    # The new momentum buffer was made in the new dtype, then decoded as the
    # old one: read (and written) past its end, a crash; int8 to None raised
    # KeyError after writing it. Now as a fresh optimizer with the new settings.
    # (in a subprocess: it crashed the interpreter)
    for dtype in (old, new):
        needs_ml_dtypes(dtype)
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import numpy as np, fastopt
        n = 5000
        p, q = np.ones(n, np.float32), np.ones(n, np.float32)
        opt = fastopt.SGD([p], lr=0.01, momentum=0.0, state_dtype={old!r})
        opt.step([np.full(n, 0.1, np.float32)])
        opt.param_groups[0].update(state_dtype={new!r}, momentum=0.9)
        fresh = fastopt.SGD([q], lr=0.01, momentum=0.9, state_dtype={new!r})
        q[:] = p
        for _ in range(2):
            opt.step([np.full(n, 0.1, np.float32)])
            fresh.step([np.full(n, 0.1, np.float32)])
        print("equal" if p.tobytes() == q.tobytes() else "differ")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "equal", out.stderr[-2000:]


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
def test_a_dequantized_state_dict_refuses_state_of_another_size(state_dtype):
    # decode read the stored array whole into a buffer of the parameter's
    # size: 100,000 values written into 8, a crash (run in a subprocess).
    needs_ml_dtypes(state_dtype)
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import numpy as np, fastopt
        a, b = np.ones(4100, np.float32), np.ones(100_000, np.float32)
        opt = fastopt.Adam([a, b], lr=0.1, state_dtype={state_dtype!r})
        opt.step([np.ones(4100, np.float32), np.ones(100_000, np.float32)])
        opt.state[0]["exp_avg"] = opt.state[1]["exp_avg"]
        if {state_dtype!r} != "bfloat16":
            opt.state[0]["exp_avg_absmax"] = opt.state[1]["exp_avg_absmax"]
        try:
            opt.state_dict(dequantize=True)
        except ValueError as e:
            print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "refused: params[0]'s state 'exp_avg" in out.stdout, \
        out.stderr[-2000:]
