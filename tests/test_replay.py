"""The replayed step (``fastopt._replay``): bitwise the checked step's results,
and every change to what the checks established sends the step back to the
checked path, which then behaves exactly as it would have."""

import threading

import numpy as np
import pytest

import fastopt
import fastopt.lr_scheduler
from fastopt import _optimizer
from fastopt.kernels import spec
from fastopt.kernels.cpu import KERNELS
from fastopt.kernels.spec import signature

CASES = [
    (fastopt.Adam, dict(lr=1e-2)),
    (fastopt.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
    (fastopt.Adam, dict(lr=1e-2, betas=(0.3, 0.9))),  # torch's lerp from the end
    (fastopt.AdamW, dict(lr=1e-2, weight_decay=0.5)),
    (fastopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (fastopt.SGD, dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True)),
    (fastopt.SGD, dict(lr=0.1)),
    (fastopt.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.1)),
]


@pytest.fixture
def checked_steps(monkeypatch):
    """Counts the steps that went through the checked path."""
    calls = []
    apply = _optimizer.Optimizer._apply

    def counting(self, *args, **kwargs):
        calls.append(1)
        return apply(self, *args, **kwargs)
    monkeypatch.setattr(_optimizer.Optimizer, "_apply", counting)
    return calls


def _params(dtype, rng):
    return [rng.standard_normal((3, 50)).astype(dtype), rng.standard_normal(7).astype(dtype),
            rng.standard_normal(0).astype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, hyper", CASES)
@pytest.mark.parametrize("target", [None, "serial", "parallel"])
def test_replayed_steps_equal_checked_steps_bitwise(cls, hyper, dtype, target, checked_steps):
    rng = np.random.default_rng(0)
    replayed = _params(dtype, rng)
    checked = [p.copy() for p in replayed]
    a, b = cls(replayed, target=target, **hyper), cls(checked, target=target, **hyper)
    for k in range(8):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in replayed]
        if k in (3, 4):
            grads[1] = None  # a parameter without a gradient: skipped by the replay
        a.step(grads)
        b.step(grads, check_finite=True)  # always the checked path
    for x, y in zip(replayed, checked):
        assert x.tobytes() == y.tobytes()
    for i in a.state:
        for key, value in a.state[i].items():
            assert np.asarray(value).tobytes() == np.asarray(b.state[i][key]).tobytes(), key
    # a: step 1 checked; b: all 8.
    assert len(checked_steps) == 1 + 8
    # Scalars reached every kernel as the arrays' dtype: nothing compiled for float64 ones.
    for loops in KERNELS.values():
        for loop in loops.values():
            assert set(loop.signatures) <= {signature(name, d) for name in spec.KERNELS
                                            for d in ("float32", "float64")}


def _adam(n=64, **hyper):
    p = np.linspace(-1, 1, n, dtype=np.float32)
    opt = fastopt.Adam([p], lr=1e-2, **hyper)
    g = np.full(n, 0.5, np.float32)
    opt.step([g])
    opt.step([g])
    return opt, p, g


def _snapshot(opt, p):
    return p.copy(), {k: np.copy(v) for k, v in opt.state[0].items()}


def _unchanged(opt, p, snap):
    assert np.array_equal(p, snap[0])
    assert all(np.array_equal(np.asarray(opt.state[0][k]), v) for k, v in snap[1].items())


def _outcome(opt, p, grads, **options):
    try:
        opt.step(grads, **options)
    except (TypeError, ValueError) as e:
        return type(e), str(e)
    return p.tobytes(), {k: np.asarray(v).tobytes() for k, v in opt.state[0].items()}


@pytest.mark.parametrize("bad", [
    lambda g, p: g.astype(np.float64),
    lambda g, p: g.astype(">f4"),  # not native byte order
    lambda g, p: g[:-1],
    lambda g, p: np.repeat(g, 2)[::2],  # not C-contiguous
    lambda g, p: p,  # the parameter itself
    lambda g, p: p[::-1],  # overlapping it
    lambda g, p: g.reshape(8, 8),
    lambda g, p: list(g),
    lambda g, p: np.asmatrix(g),  # a subclass
    lambda g, p: g.astype(np.float16),
])
def test_unusual_gradients_after_replays_get_the_checked_path(bad):
    """Whatever the checked path does with a gradient (refuse it, convert it),
    a step after replays does the same."""
    (a, p, g), (b, q, h) = _adam(), _adam()
    snap = _snapshot(a, p)
    replayed, checked = _outcome(a, p, [bad(g, p)]), _outcome(b, q, [bad(h, q)], check_finite=True)
    assert replayed == checked
    if isinstance(replayed[0], type):
        _unchanged(a, p, snap)


def test_changed_hyperparameters_take_effect_or_are_refused(checked_steps):
    opt, p, g = _adam()
    opt.param_groups[0]["lr"] = 0.5
    before = p.copy()
    opt.step([g])
    reference = fastopt.Adam([np.linspace(-1, 1, 64, dtype=np.float32)], lr=1e-2)
    ref = reference.param_groups[0]["params"][0]
    reference.step([g])
    reference.step([g])
    reference.param_groups[0]["lr"] = 0.5
    reference.step([g], check_finite=True)
    assert p.tobytes() == ref.tobytes() and not np.array_equal(p, before)
    snap = _snapshot(opt, p)
    opt.param_groups[0]["amsgrad"] = 0  # retyped: refused, as by the checked path
    with pytest.raises(TypeError):
        opt.step([g])
    _unchanged(opt, p, snap)


def test_mutable_hyperparameters_are_never_replayed(checked_steps):
    opt, p, g = _adam()
    opt.param_groups[0]["betas"] = [0.9, 0.999]
    n = len(checked_steps)
    opt.step([g])
    opt.step([g])
    assert len(checked_steps) == n + 2
    opt.param_groups[0]["betas"][0] = 0.5  # edited in place: seen by the next step
    opt.step([g])
    assert len(checked_steps) == n + 3
    m4 = 0.5 * (1 - 0.9 ** 4)  # four steps of 0.5 with beta1 0.9, then one with 0.5
    assert opt.state[0]["exp_avg"][0] == pytest.approx(m4 * 0.5 + 0.25, rel=1e-6)


def test_parameter_changes_are_seen(checked_steps):
    opt, p, g = _adam()
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writeable|writable"):
        opt.step([g])
    p.flags.writeable = True
    opt.step([g])
    q = np.zeros(64, np.float32)
    opt.param_groups[0]["params"].append(q)  # edited in place
    opt.step([g, g])
    assert not np.array_equal(q, 0) and set(opt.state) == {0, 1}
    opt.param_groups[0]["params"][1] = q.copy()  # replaced: fresh state
    opt.step([g, g])
    assert opt.state[1]["step"] == 1


def test_resized_parameter_is_refused(checked_steps):
    opt, p, g = _adam()
    p.resize(32, refcheck=False)
    with pytest.raises(ValueError, match="changed after its first step"):
        opt.step([g[:32]])


def test_replaced_state_is_used(checked_steps):
    opt, p, g = _adam()
    opt.state[0]["exp_avg"] = np.full(64, 100.0, np.float32)
    before = p.copy()
    opt.step([g])
    assert opt.state[0]["exp_avg"][0] == pytest.approx(90.05)
    assert np.all(p < before)
    state = opt.state_dict()
    other, q, _ = _adam()
    other.load_state_dict(state)
    other.step([g])
    assert other.state[0]["step"] == 4


STATE_DTYPES = ["bfloat16", "int8", "int4"]


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("cls, hyper", [(fastopt.Adam, dict(lr=1e-2, amsgrad=True)),
                                        (fastopt.AdamW, dict(lr=1e-2)),
                                        (fastopt.SGD, dict(lr=0.1, momentum=0.9)),
                                        (fastopt.Adagrad, dict(lr=0.1))])
@pytest.mark.parametrize("target", ["serial", "parallel"])
def test_reduced_precision_state_is_replayed_bitwise(state_dtype, cls, hyper, target,
                                                     checked_steps):
    pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)
    # one blockwise-sized parameter with an odd length, one kept at full precision
    replayed = [rng.standard_normal(4099).astype(np.float32),
                rng.standard_normal(5).astype(np.float32)]
    checked = [p.copy() for p in replayed]
    a = cls(replayed, target=target, state_dtype=state_dtype, **hyper)
    b = cls(checked, target=target, state_dtype=state_dtype, **hyper)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in replayed]
        a.step(grads)
        b.step(grads, check_finite=True)
    assert len(checked_steps) == 1 + 5  # a: the first step only
    for x, y in zip(replayed, checked):
        assert x.tobytes() == y.tobytes()
    for i in a.state:
        assert a.state[i].keys() == b.state[i].keys()
        for key, value in a.state[i].items():
            assert np.asarray(value).tobytes() == np.asarray(b.state[i][key]).tobytes(), key


@pytest.mark.parametrize("replace", ["codes", "absmax", "state_dtype"])
def test_replaced_reduced_precision_state_is_used(replace, checked_steps):
    """A state array, block scale or storage name replaced between steps is
    what the next step reads (the replay notices and steps checked)."""
    n = 4096
    p = np.linspace(-1, 1, n, dtype=np.float32)
    opt = fastopt.Adam([p], lr=1e-2, state_dtype="int8")
    g = np.full(n, 0.5, np.float32)
    opt.step([g])
    opt.step([g])
    state = opt.state[0]
    if replace == "codes":
        state["exp_avg"] = state["exp_avg"].copy()
    elif replace == "absmax":
        state["exp_avg_absmax"] = state["exp_avg_absmax"] * 2
    else:
        state["state_dtype"] = "".join(["in", "t8"])  # equal, not the same object
    expected = _outcome_of_fresh_load(opt, p, g)
    count = len(checked_steps)
    opt.step([g])
    assert len(checked_steps) == count + 1
    assert p.tobytes() == expected[0]
    assert {k: np.asarray(v).tobytes() for k, v in opt.state[0].items()} == expected[1]


def _outcome_of_fresh_load(opt, p, g):
    """What a fresh optimizer given ``opt``'s state dict does next (checked)."""
    q = p.copy()
    other = fastopt.Adam([q], lr=1e-2, state_dtype="int8")
    other.load_state_dict(opt.state_dict())
    other.step([g])
    return q.tobytes(), {k: np.asarray(v).tobytes() for k, v in other.state[0].items()}


@pytest.mark.parametrize("state_dtype", [None, "int8"])
@pytest.mark.parametrize("wrap", [np.asmatrix, lambda a: a])
def test_a_parameter_made_read_only_is_refused(wrap, state_dtype):
    """Read-only after a step, a subclass (whose base-class view the kernels
    write) as much as a plain array: refused, not written."""
    p = wrap(np.ones((64, 80), np.float32))
    opt = fastopt.Adam([p], lr=0.1, state_dtype=state_dtype)
    g = np.ones((64, 80), np.float32)
    opt.step([g])
    opt.step([g])
    p.setflags(write=False)
    before = p.tobytes()
    with pytest.raises(ValueError, match="read-only"):
        opt.step([g])
    assert p.tobytes() == before


@pytest.mark.parametrize("state_dtype", [None, "int8"])
@pytest.mark.parametrize("wrap", [np.asmatrix, lambda a: a])
def test_a_dtype_set_in_place_is_refused_with_nothing_changed(wrap, state_dtype):
    p = wrap(np.ones((64, 80), np.float32))
    opt = fastopt.Adam([p], lr=0.1, state_dtype=state_dtype)
    g = np.ones((64, 80), np.float32)
    opt.step([g])
    opt.step([g])
    p.dtype = np.dtype(">f4")  # the same bytes, read the other way round
    snap = p.tobytes(), {k: np.asarray(v).tobytes() for k, v in opt.state[0].items()}
    for grad in (g, g.astype(">f4")):
        with pytest.raises(TypeError, match=">f4"):
            opt.step([grad])
        assert (p.tobytes(), {k: np.asarray(v).tobytes() for k, v in opt.state[0].items()}) == snap


def _same_replayed_and_checked(run):
    """``run(options)`` gives the same whether its steps are replayed
    (``{}``) or always checked (``check_finite=True``)."""
    assert run({}) == run({"check_finite": True})


def test_a_mutable_learning_rate_is_read_at_every_step():
    """A scheduled lr of a kind that can change in place is not held by
    identity: each step reads its value."""
    class Rate(float):  # a float subclass that can change under the same object
        def __float__(self):
            return self.value

    def run(options):
        p = np.zeros(100, np.float32)
        opt = fastopt.SGD([p], lr=1.0)
        g = np.ones(100, np.float32)
        opt.step([g])
        rate = opt.param_groups[0]["lr"] = Rate(1.0)
        rate.value = 1.0
        opt.step([g], **options)
        rate.value = 0.25
        opt.step([g], **options)
        return p.tobytes()
    _same_replayed_and_checked(run)


def test_state_entries_added_between_steps_are_seen():
    """An entry put into a parameter's state (here a "master" copy while
    master weights are off) is handled as the checked path handles it."""
    ml_dtypes = pytest.importorskip("ml_dtypes")

    def run(options):
        p = np.ones(100, ml_dtypes.bfloat16)
        opt = fastopt.Adam([p], lr=0.01)
        g = np.ones(100, ml_dtypes.bfloat16)
        opt.step([g])
        opt.state[0]["master"] = np.zeros(100, np.float32)
        opt.step([g], **options)
        opt.param_groups[0]["master_weights"] = True
        opt.step([g])
        return p.tobytes(), sorted(opt.state[0])
    _same_replayed_and_checked(run)


def test_threads_share_one_optimizer():
    p = np.zeros(1000, np.float32)
    opt = fastopt.SGD([p], lr=1.0)
    g = [np.ones(1000, np.float32)]

    def work():
        for _ in range(500):
            opt.step(g)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.all(p == -2000.0)


# --- functional calls --------------------------------------------------------

FUNCTIONAL = [
    (fastopt.functional.adam, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
     dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    (fastopt.functional.adam, ("exp_avg", "exp_avg_sq"), dict(lr=1e-2, betas=(0.3, 0.9))),
    (fastopt.functional.adamw, ("exp_avg", "exp_avg_sq"), dict(lr=1e-2)),
    (fastopt.functional.adagrad, ("state_sum",), dict(lr=0.1, lr_decay=0.01)),
    (fastopt.functional.sgd, ("momentum_buffer",), dict(lr=0.1, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn, states, hyper", FUNCTIONAL)
def test_repeated_functional_calls_equal_checked_calls_bitwise(fn, states, hyper, dtype):
    rng = np.random.default_rng(1)
    p = rng.standard_normal((4, 25)).astype(dtype)
    q = p.copy()
    sa = [np.zeros_like(p) for _ in states]
    sb = [np.zeros_like(p) for _ in states]
    for t in range(1, 7):
        g = rng.standard_normal(p.shape).astype(dtype)
        extra = dict(first_step=t == 1) if fn is fastopt.functional.sgd else dict(step=t)
        fn(p, g, *sa, **extra, **hyper)
        fn(q, g, *sb, **extra, check_finite=True, **hyper)  # always the checked path
        assert p.tobytes() == q.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(sa, sb))


@pytest.mark.parametrize("change", [
    lambda args, kw: (args, {**kw, "lr": 0.5}),
    lambda args, kw: (args, {**kw, "amsgrad": 1}),  # retyped: refused
    lambda args, kw: (args, {**kw, "step": 0}),
    lambda args, kw: (args, {**kw, "step": 3.0}),
    lambda args, kw: (args, {**kw, "target": "gpu"}),
    lambda args, kw: ((args[0], args[0]) + args[2:], kw),  # grad is the parameter
    lambda args, kw: ((args[0], args[2]) + args[2:], kw),  # grad is a state array
    lambda args, kw: ((args[0], args[1].copy()) + args[2:], kw),  # a new gradient: replayed
    lambda args, kw: ((args[0], args[1], args[0], args[3]), kw),  # state is the parameter
    lambda args, kw: ((args[0], args[1].astype(np.float64)) + args[2:], kw),
    lambda args, kw: ((args[0], args[1][::-1]) + args[2:], kw),  # not C-contiguous: copied
    lambda args, kw: ((args[0], args[1], args[2][:-1], args[3]), kw),
])
def test_changed_functional_calls_get_the_checked_path(change):
    """After a call is recorded, any change in its arguments gets exactly
    what the checked path does with it."""
    def outcome(check_finite):
        p = np.linspace(-1, 1, 50)
        args = (p, np.full(50, 0.5), np.zeros(50), np.zeros(50))
        kw = dict(step=1, lr=1e-2)
        fastopt.functional.adam(*args, **kw)  # recorded
        args, kw = change(args, {**kw, "step": 2})
        if check_finite:
            kw["check_finite"] = True
        try:
            fastopt.functional.adam(*args, **kw)
        except (TypeError, ValueError) as e:
            return type(e), str(e), p.tobytes()
        return p.tobytes()
    assert outcome(False) == outcome(True)


def test_recorded_calls_hold_their_arrays_weakly():
    import gc
    import weakref
    p = np.zeros(10)
    fastopt.functional.adam(p, np.ones(10), np.zeros(10), np.zeros(10), step=1)
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("options", [{}, {"check_finite": True}, {"max_grad_norm": 1.0}])
@pytest.mark.parametrize("target", [None, "parallel"])
@pytest.mark.parametrize("cls, hyper", CASES + [
    (fastopt.Adam, dict(state_dtype="int8")), (fastopt.AdamW, dict(state_dtype="int4")),
    (fastopt.SGD, dict(momentum=0.9, state_dtype="bfloat16")), ("bfloat16", {}),
    ("bfloat16", dict(stochastic_rounding=True))])
def test_gradients_are_not_held_after_a_step(cls, hyper, target, options, checked_steps):
    """No step, checked or replayed, keeps a gradient alive: a loop that
    frees each step's gradients needs memory for one set of them, not two."""
    import weakref
    rng = np.random.default_rng(5)
    dtype = np.float32
    if cls == "bfloat16" or hyper.get("state_dtype") == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")  # the lowp extra
    if cls == "bfloat16":  # bfloat16 parameters and gradients
        cls, dtype = fastopt.Adam, ml_dtypes.bfloat16
    params = [rng.standard_normal(s).astype(dtype) for s in ((50, 100), 5000, 3)]
    opt = cls(params, target=target, **hyper)
    for _ in range(4):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        refs = [weakref.ref(g) for g in grads]
        opt.step(grads, **options)
        del grads
        assert [r() for r in refs] == [None] * 3
    assert len(checked_steps) == (1 if not options else 4)


def test_a_hyperparameter_deleted_from_the_end_of_a_group_is_refused():
    p = np.ones(4, np.float32)
    opt = fastopt.Adam([p], lr=0.1)
    group = opt.param_groups[0]
    group["eps"] = group.pop("eps")  # the group's last key
    opt.step([np.ones_like(p)])
    opt.step([np.ones_like(p)])
    del group["eps"]
    with pytest.raises(ValueError, match="eps"):
        opt.step([np.ones_like(p)])


def test_a_subclass_parameter_made_non_contiguous_in_place_is_refused():
    p = np.arange(4.0).reshape(2, 2).view(_Sub)
    opt = fastopt.SGD([p], lr=0.1)
    opt.step([np.ones((2, 2))])
    opt.step([np.ones((2, 2))])
    with pytest.warns(DeprecationWarning) if np.lib.NumpyVersion(np.__version__) >= "2.4.0" \
            else _nothing():
        p.strides = (8, 16)  # the kernels' base-class view keeps its own
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.step([np.ones((2, 2))])


class _Sub(np.ndarray):
    pass


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def test_state_arrays_changed_in_place_are_refused_not_stepped():
    """A dtype or strides set in place on a state array (which NumPy
    deprecates) sends the step to the checked path, which refuses it, as it
    refuses one replaced: nothing is written."""
    import warnings
    for key, change in (("exp_avg_sq", "dtype"), ("exp_avg", "strides")):
        p = np.zeros(8, np.float32)
        opt = fastopt.Adam([p], lr=0.1)
        for _ in range(2):
            opt.step([np.ones(8, np.float32)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if change == "dtype":
                opt.state[0][key].dtype = np.int32
            else:
                opt.state[0][key].strides = (0,)
        before = p.copy()
        with pytest.raises(ValueError, match=key):
            opt.step([np.ones(8, np.float32)])
        np.testing.assert_array_equal(p, before)


@pytest.mark.parametrize("cls, hyper", CASES)
def test_a_schedule_changing_lr_is_replayed(cls, hyper, checked_steps):
    """A learning-rate schedule sets ``lr`` every step: the step still
    replays, with the new rate, bitwise as the checked path."""
    rng = np.random.default_rng(2)
    p = rng.standard_normal(300)
    q = p.copy()
    a, b = cls([p], **hyper), cls([q], **hyper)
    sa, sb = (fastopt.lr_scheduler.CosineAnnealingLR(o, T_max=10) for o in (a, b))
    for _ in range(8):
        g = rng.standard_normal(300)
        a.step([g])
        b.step([g], check_finite=True)
        sa.step()
        sb.step()
    assert p.tobytes() == q.tobytes()
    assert len(checked_steps) == 1 + 8  # a: its first step only


@pytest.mark.parametrize("kind", [np.float64, np.float32])
def test_a_numpy_scalar_learning_rate_is_replayed(kind, checked_steps):
    """A rate computed with NumPy (np.cos, np.linspace...) is a NumPy scalar:
    it counted as a value that may change in place, and every step took the
    checked path (8.5x the replayed one at 200 parameters)."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(300).astype(np.float32)
    q = p.copy()
    a, b = fastopt.Adam([p], lr=1e-2), fastopt.Adam([q], lr=1e-2)
    for t in range(8):
        g = rng.standard_normal(300).astype(np.float32)
        for opt in (a, b):
            opt.param_groups[0]["lr"] = kind(1e-2 * (1 + np.cos(np.pi * t / 8)) / 2)
        a.step([g])
        b.step([g], check_finite=True)
    assert p.tobytes() == q.tobytes()
    assert len(checked_steps) == 1 + 8  # a: its first step only
    for lr in (kind(-0.0), kind(0.0)):  # a zero's sign is still seen
        a.param_groups[0]["lr"] = lr
        a.step([g])
    assert len(checked_steps) == 1 + 8


@pytest.mark.parametrize("bad", [-0.5, float("nan"), True, "0.1", np.array(0.1)])
def test_a_bad_scheduled_lr_is_refused_by_the_checked_path(bad):
    opt, p, g = _adam()
    snap = _snapshot(opt, p)
    opt.param_groups[0]["lr"] = bad
    with pytest.raises((TypeError, ValueError)):
        opt.step([g])
    _unchanged(opt, p, snap)


def test_a_loop_over_layers_replays_each_layer(monkeypatch):
    """Calls alternating between parameters each repeat their own last call."""
    from fastopt import _replay
    calls = []
    run = _replay.Call.run
    monkeypatch.setattr(_replay.Call, "run", lambda self, *a: calls.append(1) or run(self, *a))
    layers = [(np.zeros(n), np.zeros(n), np.zeros(n)) for n in (10, 20, 30)]
    for t in range(1, 4):
        for p, m, v in layers:
            fastopt.functional.adam(p, np.ones_like(p), m, v, step=t, lr=0.1)
    assert len(calls) == 6  # every call after each layer's first
    assert all(np.allclose(p, layers[0][0][0]) for p, _, _ in layers)


def test_a_loop_over_more_layers_than_a_thousand_replays(monkeypatch):
    """The recorded calls were all dropped at 1,024: a loop over 1,100
    layers never replayed (10x per call). Now the oldest go first, and
    only beyond 4,096."""
    from fastopt import _replay
    monkeypatch.setattr(_replay, "_CALLS", {})
    calls = []
    run = _replay.Call.run
    monkeypatch.setattr(_replay.Call, "run", lambda self, *a: calls.append(1) or run(self, *a))
    layers = [(np.zeros(4), np.zeros(4), np.zeros(4)) for _ in range(1100)]
    g = np.ones(4)
    for t in range(1, 4):
        for p, m, v in layers:
            fastopt.functional.adam(p, g, m, v, step=t, lr=0.1)
    assert len(calls) == 2 * 1100
    for k in range(_replay._KEEP + 10):  # beyond the limit: the oldest are dropped
        _replay.remember("adam", (np.zeros(1),), _replay._CALLS[next(iter(_replay._CALLS))])
    assert len(_replay._CALLS) <= _replay._KEEP


@pytest.mark.parametrize("cls, hyper", CASES[:3] + CASES[-1:])
def test_a_gradient_missing_on_some_steps_and_other_sequences_are_replayed(cls, hyper,
                                                                          checked_steps):
    """A parameter without a gradient every other step, or the gradients as a
    dict's values, took the checked path (and recorded a new replay) every
    step: 11-16x the replayed step at 200 parameters."""
    rng = np.random.default_rng(5)
    ps = [rng.standard_normal(50) for _ in range(3)]
    qs = [p.copy() for p in ps]
    a, b = cls(ps, **hyper), cls(qs, **hyper)
    for t in range(8):
        grads = {k: rng.standard_normal(50) for k in range(3)}
        if t % 2:
            grads[1] = None
        a.step(grads.values() if t % 3 else list(grads.values()))
        b.step(list(grads.values()), check_finite=True)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(ps, qs))
    assert len(checked_steps) == 1 + 8  # a: its first step only
    ps[1].flags.writeable = False  # without its gradient: still refused, as checked
    snap = [p.copy() for p in ps]
    with pytest.raises(ValueError, match="read-only"):
        a.step([np.ones(50), None, np.ones(50)])
    assert all(np.array_equal(p, s) for p, s in zip(ps, snap))


@pytest.mark.parametrize("fn, states, extra", [
    ("adam", 2, {}), ("adamw", 2, {"weight_decay": 0.1}), ("adagrad", 1, {}),
    ("sgd", 1, {"momentum": 0.9})])
def test_functional_calls_follow_a_schedule_and_numpy_steps_replayed(fn, states, extra,
                                                                       monkeypatch):
    """A learning rate that changes at every call (a schedule), or a step
    given as a NumPy integer, sent every call to the checked path (3.9x and
    2.9x a replayed call); a new valid rate now replays, bitwise as checked."""
    from fastopt import _replay
    monkeypatch.setattr(_replay, "_CALLS", {})
    calls = []
    run = _replay.Call.run
    monkeypatch.setattr(_replay.Call, "run", lambda self, *a: calls.append(1) or run(self, *a))
    F = fastopt.functional
    rng = np.random.default_rng(4)
    p = rng.standard_normal(40)
    q = p.copy()
    mine, theirs = ([np.zeros(40) for _ in range(states)] for _ in range(2))
    for t in np.arange(1, 9):
        g = rng.standard_normal(40)
        lr = 0.1 * (1 + np.cos(np.pi * t / 8)) / 2 if t % 2 else float(0.05 * t)
        count = {"first_step": bool(t == 1)} if fn == "sgd" else {"step": t}
        getattr(F, fn)(p, g, *mine, lr=lr, **count, **extra)
        getattr(F, fn)(q, g, *theirs, lr=lr, check_finite=True, **count, **extra)
    assert p.tobytes() == q.tobytes()
    assert len(calls) == 7  # every call after the first
    with pytest.raises(ValueError):  # a bad new rate: refused by the checked call
        getattr(F, fn)(p, g, *mine, lr=-1.0, **count, **extra)
    assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("cls, hyper", [
    (fastopt.Adam, dict(lr=1e-2)), (fastopt.AdamW, dict(lr=1e-2, amsgrad=True)),
    (fastopt.SGD, dict(lr=0.1, momentum=0.9)), (fastopt.SGD, dict(lr=0.1, momentum=0.9,
                                                                nesterov=True)),
    (fastopt.Adam, dict(lr=1e-2, state_dtype="int8"))])
def test_a_momentum_schedule_is_replayed(cls, hyper, checked_steps):
    """OneCycleLR cycles the momentum (Adam's beta1, SGD's momentum) with the
    rate by default: every step took the checked path (15x the replayed one
    at 200 parameters). Now replayed, bitwise as the checked path."""
    rng = np.random.default_rng(6)
    n = 5000 if "state_dtype" in hyper else 300
    p = rng.standard_normal(n).astype(np.float32)
    q = p.copy()
    a, b = cls([p], **hyper), cls([q], **hyper)
    sa, sb = (fastopt.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12) for o in (a, b))
    for _ in range(10):
        g = rng.standard_normal(n).astype(np.float32)
        a.step([g])
        b.step([g], check_finite=True)
        sa.step()
        sb.step()
    assert p.tobytes() == q.tobytes()
    for key, value in a.state[0].items():
        assert np.asarray(value).tobytes() == np.asarray(b.state[0][key]).tobytes(), key
    assert len(checked_steps) == 1 + 10  # a: its first step only
    # a beta1 on the other side of 0.5 (torch's other lerp formula), and
    # momentum switched off (its state changes: the checked path)
    key = "betas" if "betas" in a.param_groups[0] else "momentum"
    for value in ((0.3, 0.999), (0.9, 0.99)) if key == "betas" else (0.5,):
        for opt in (a, b):
            opt.param_groups[0][key] = value
        g = rng.standard_normal(n).astype(np.float32)
        a.step([g])
        b.step([g], check_finite=True)
    assert p.tobytes() == q.tobytes()
    if key == "momentum" and not hyper.get("nesterov"):
        for opt in (a, b):
            opt.param_groups[0]["momentum"] = 0.0
        a.step([g])
        b.step([g], check_finite=True)
        assert p.tobytes() == q.tobytes()


def test_numpy_scalar_hyperparameters_crossing_zero():
    """A NumPy zero went into the cache key as a (value, sign) pair, and a
    key holding a NumPy scalar compared with it broadcast: 'truth value of
    an array is ambiguous', on a warm-up from lr 0 (functional, classes,
    fastopt.torch alike)."""
    F = fastopt.functional
    lrs = np.linspace(0.0, 1e-2, 4)
    p, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    q, mq, vq = np.ones(4), np.zeros(4), np.zeros(4)
    for t in range(4):
        F.adam(p, np.ones(4), m, v, step=t + 1, lr=lrs[t])
        F.adam(q, np.ones(4), mq, vq, step=t + 1, lr=float(lrs[t]), check_finite=True)
    assert p.tobytes() == q.tobytes()
    ps, qs = [np.ones(4)], [np.ones(4)]
    a, b = fastopt.Adam(ps, lr=0.1), fastopt.Adam(qs, lr=0.1)
    for wd in (np.float64(0.0), np.float64(0.01), np.float64(-0.0), np.float32(0.0), 0.0):
        for opt in (a, b):
            opt.param_groups[0]["weight_decay"] = wd
        a.step([np.ones(4)])
        b.step([np.ones(4)], check_finite=True)
    assert ps[0].tobytes() == qs[0].tobytes()


def _state_edits():
    """State edits the checked path refuses at a step, even for a parameter
    without a gradient (``edit(opt)`` makes it on params[1])."""
    def read_only(opt):
        opt.state[1]["exp_avg"].flags.writeable = False
    return {
        "wrong shape": lambda opt: opt.state[1].__setitem__("exp_avg", np.zeros(3)),
        "read-only": read_only,
        "another's": lambda opt: opt.state[1].__setitem__("exp_avg", opt.state[0]["exp_avg"]),
        "not a dict": lambda opt: opt.state.__setitem__(1, "junk"),
        "a master copy": lambda opt: opt.state[1].__setitem__("master", np.zeros(5)),
    }


@pytest.mark.parametrize("edit", list(_state_edits()))
@pytest.mark.parametrize("recorded", ["with a gradient", "without one"])
def test_a_parameter_without_a_gradient_has_its_state_checked_as_the_checked_path_does(
        edit, recorded):
    """The replay skipped a parameter given None with only its array
    checked: its state, edited so that the checked path refuses the step,
    was stepped past."""
    ps = [np.ones(5), np.ones(5)]
    opt = fastopt.Adam(ps, lr=0.1)
    opt.step([np.ones(5), np.ones(5)])
    second = np.ones(5) if recorded == "with a gradient" else None
    opt.step([np.ones(5), second])  # recorded
    _state_edits()[edit](opt)
    before = ps[0].copy()
    with pytest.raises((TypeError, ValueError)):
        opt.step([np.ones(5), None], check_finite=True)  # the checked path refuses
    with pytest.raises((TypeError, ValueError)):
        opt.step([np.ones(5), None])  # and so does the replay now
    np.testing.assert_array_equal(ps[0], before)
