"""FlatParams: views into one buffer, one kernel call per group, same numbers."""

import pickle

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch

SHAPES = {"w1": (20, 30), "b1": (30,), "w2": (30, 5), "b2": (5,), "scale": ()}


def random_flat(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {k: np.asarray(rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}
    return fastopt.FlatParams.from_arrays(arrays), arrays


def fill_grads(flat, seed):
    rng = np.random.default_rng(seed)
    for name in flat:
        flat.grad[name][...] = rng.standard_normal(flat.grad[name].shape)


def test_layout_and_views():
    flat = fastopt.FlatParams(SHAPES, dtype=np.float64)
    assert flat.data.shape == flat.grad_data.shape == (sum(np.prod(s, dtype=int) for s in SHAPES.values()),)
    assert list(flat) == list(SHAPES) and len(flat) == len(SHAPES)
    for name, shape in SHAPES.items():
        assert flat[name].shape == flat.grad[name].shape == shape
        assert np.shares_memory(flat[name], flat.data)
        assert np.shares_memory(flat.grad[name], flat.grad_data)
    flat["b1"][:] = 3.0
    assert np.count_nonzero(flat.data) == 30
    assert flat.dtype == np.float64


def test_from_arrays_copies():
    flat, arrays = random_flat(np.float64)
    assert flat.dtype == np.float64
    for name, a in arrays.items():
        np.testing.assert_array_equal(flat[name], a)
        assert not np.shares_memory(flat[name], a)
    assert fastopt.FlatParams.from_arrays({"a": np.arange(3)}).dtype == np.float32


@pytest.mark.parametrize("target", ["serial", "parallel"])
@pytest.mark.parametrize("cls,kw", [(fastopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                    (fastopt.Adagrad, dict(lr=0.1, lr_decay=0.01)),
                                    (fastopt.Adam, dict(lr=0.01, amsgrad=True)),
                                    (fastopt.AdamW, dict(lr=0.01))])
def test_flat_step_equals_separate_arrays_bitwise(cls, kw, target):
    flat, arrays = random_flat()
    separate = {k: a.copy() for k, a in arrays.items()}
    opt_flat = cls(flat, target=target, **kw)
    opt_sep = cls(list(separate.values()), target=target, **kw)
    for step in range(3):
        fill_grads(flat, step)
        opt_flat.step()
        opt_sep.step([flat.grad[k].copy() for k in separate])
    for k, a in separate.items():
        np.testing.assert_array_equal(flat[k], a)


def test_groups_from_segments_one_kernel_call_per_group(monkeypatch):
    flat, arrays = random_flat()
    calls = []
    real = _dispatch.kernel

    def counting(name, target, p):
        calls.append(p.size)
        return real(name, target, p)

    monkeypatch.setattr("fastopt._update.kernel", counting)
    weights = flat.segment("w1", "b1")
    rest = flat.segment("w2", "b2", "scale")
    opt = fastopt.AdamW([{"params": weights}, {"params": rest, "weight_decay": 0.0}], lr=0.01)
    separate = {k: a.copy() for k, a in arrays.items()}
    ref = fastopt.AdamW([{"params": [separate["w1"], separate["b1"]]},
                         {"params": [separate[k] for k in ("w2", "b2", "scale")], "weight_decay": 0.0}],
                        lr=0.01)
    fill_grads(flat, 7)
    opt.step()
    assert calls == [weights.data.size, rest.data.size]
    ref.step([flat.grad[k].copy() for k in separate])
    for k, a in separate.items():
        np.testing.assert_array_equal(flat[k], a)


def test_state_dict_round_trip():
    flat, _ = random_flat()
    opt = fastopt.Adam(flat, lr=0.01)
    fill_grads(flat, 1)
    opt.step()
    blob = pickle.dumps((flat.data.copy(), opt.state_dict()))
    fill_grads(flat, 2)
    opt.step()
    data, sd = pickle.loads(blob)
    again = fastopt.FlatParams(SHAPES)
    again.data[:] = data
    opt2 = fastopt.Adam(again)
    opt2.load_state_dict(sd)
    again.grad_data[:] = flat.grad_data
    opt2.step()
    np.testing.assert_array_equal(again.data, flat.data)


def test_mixed_flat_and_plain_params_need_grads():
    flat, _ = random_flat()
    w = np.zeros(3, np.float32)
    opt = fastopt.SGD([{"params": flat}, {"params": [w]}], lr=0.1)
    with pytest.raises(TypeError, match="FlatParams"):
        opt.step()
    opt.step([flat.grad_data, np.ones(3, np.float32)])
    np.testing.assert_allclose(w, -0.1)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fastopt.FlatParams([("a", 3)]), TypeError, "mapping"),
    (lambda: fastopt.FlatParams({"a": 3}, dtype=np.int32), TypeError, "float32 or float64"),
    (lambda: fastopt.FlatParams({"a": (3, -1)}), ValueError, "negative"),
    (lambda: fastopt.FlatParams({"a": "x"}), TypeError, "shape"),
    (lambda: fastopt.FlatParams({}), ValueError, "empty"),
    (lambda: fastopt.FlatParams(SHAPES).segment("w1", "w2"), ValueError, "adjacent"),
    (lambda: fastopt.FlatParams(SHAPES).segment("nope"), KeyError, "nope"),
    (lambda: fastopt.FlatParams(SHAPES).segment(), ValueError, "at least one"),
    (lambda: fastopt.FlatParams({"a": True}), TypeError, "shape"),
    (lambda: fastopt.FlatParams({"a": (2, np.bool_(True))}), TypeError, "shape"),
    (lambda: fastopt.FlatParams({"a": (0, 2**64)}), ValueError, "NumPy's limits"),
    (lambda: fastopt.FlatParams({"a": (1,) * 70}), ValueError, "NumPy's limits"),
    (lambda: fastopt.FlatParams({"a": 3}, dtype=None), TypeError, "float32 or float64"),
    (lambda: fastopt.FlatParams.from_arrays({"a": None}), TypeError, "real numbers"),
    (lambda: fastopt.FlatParams.from_arrays({"a": np.array([1, None])}), TypeError,
     "real numbers"),
    (lambda: fastopt.FlatParams.from_arrays({"a": np.ones(2, complex)}), TypeError,
     "real numbers"),
    (lambda: fastopt.FlatParams.from_arrays({"a": ["x"]}), TypeError, "real numbers"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_overlapping_segments_refused():
    flat = fastopt.FlatParams(SHAPES)
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam([{"params": flat}, {"params": flat.segment("b1")}])


def test_zero_grad():
    flat = fastopt.FlatParams(SHAPES)
    flat.grad_data[:] = 1
    flat.zero_grad()
    assert not flat.grad_data.any()


def test_buffers_cannot_be_replaced():
    # The views, segments and optimizers hold the buffers made at
    # construction: a new one assigned would be silently ignored.
    flat = fastopt.FlatParams({"w": (2, 3), "b": 3}, dtype=np.float64)
    segment = flat.segment("b")
    for obj in (flat, segment):
        for name in ("data", "grad_data"):
            with pytest.raises(AttributeError):
                setattr(obj, name, np.ones(9))
    flat.data[:] = 5.0  # writing into them is how to set values
    assert (flat["b"] == 5.0).all() and (segment.data == 5.0).all()


def test_compared_and_hashed_by_identity():
    a, b = fastopt.FlatParams(SHAPES), fastopt.FlatParams(SHAPES)
    assert a == a and a != b and not (a == b)
    assert len({a, b, a}) == 2 and {a: 1}[a] == 1


def test_a_removed_flatparams_gradient_is_not_found_by_a_reused_id():
    # The optimizer remembers a FlatParams' gradient buffer by its data
    # array's id; once the array is gone, a new array at the same address
    # must not be stepped with the dead one's gradient.
    flat = fastopt.FlatParams({"a": 4}, dtype=np.float64)
    flat.grad_data[:] = 100
    opt = fastopt.SGD(flat, lr=1.0)
    opt.param_groups[0]["params"] = [np.zeros(4)]  # out before its first step: no state kept
    opt.step([np.zeros(4)])
    stale = id(flat.data)
    del flat
    candidates = [np.zeros(4) for _ in range(2000)]
    reused = [a for a in candidates if id(a) == stale]
    assert stale not in opt._plist.flat_grad
    if not reused:
        pytest.skip("the freed address was not reused here")
    opt.param_groups[0]["params"] = [reused[0]]
    with pytest.raises(TypeError, match="FlatParams"):
        opt.step()
    assert not reused[0].any()


def test_from_arrays_takes_bfloat16_arrays():
    # (refused as "not real numbers" when the dtype check came in; bfloat16 widens exactly)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    for dtype, want in ((None, np.float32), (np.float64, np.float64)):
        flat = fastopt.FlatParams.from_arrays({"w": a}, dtype=dtype)
        assert flat.data.dtype == want
        np.testing.assert_array_equal(flat["w"], [1.5, -2.0, 3.25])


def test_from_arrays_of_dtypes_with_no_common_type_says_so():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arrays = {"a": np.ones(2, ml_dtypes.bfloat16), "b": np.ones(2, np.int64)}
    with pytest.raises(TypeError, match="no common type.*pass dtype="):
        fastopt.FlatParams.from_arrays(arrays)
    assert fastopt.FlatParams.from_arrays(arrays, dtype=np.float32).data.dtype == np.float32
