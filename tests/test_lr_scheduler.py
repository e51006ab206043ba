"""fastopt.lr_scheduler against torch.optim.lr_scheduler: the same rates (to
1e-12) over 30 steps, for every scheduler and several argument sets, on
fastopt optimizers with several groups; state dicts; bad arguments. The
comparisons with torch are skipped where torch is not installed."""

import copy
import math

import numpy as np
import pytest

import fastopt
from fastopt import lr_scheduler as S

try:
    import torch
    TS = torch.optim.lr_scheduler
except ImportError:
    torch = TS = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

STEPS = 30
LRS = (0.1, 0.03)  # two groups, two starting rates


class Lambda:
    """A callable object (its __dict__ goes into LambdaLR's state dict)."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return self.rate ** epoch


# name -> (fastopt optimizer class, torch optimizer class, make(lib, opt) -> scheduler)
CASES = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=4),
    "StepLR-gamma": lambda m, o: m.StepLR(o, step_size=1, gamma=0.7),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[3, 7, 7, 20], gamma=0.5),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=10),
    "CosineAnnealingLR-eta_min": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
    "CosineAnnealingLR-long": lambda m, o: m.CosineAnnealingLR(o, T_max=40, eta_min=1e-4),
    "LinearLR": lambda m, o: m.LinearLR(o),
    "LinearLR-down": lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                            total_iters=20),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=lambda e: 1 / (1 + e)),
    "LambdaLR-list": lambda m, o: m.LambdaLR(o, lr_lambda=[Lambda(0.95), lambda e: 0.5 ** e]),
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=6),
    "CosineAnnealingWarmRestarts-mult": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2, eta_min=0.002),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, max_lr=0.5, total_steps=STEPS),
    "OneCycleLR-linear-3phase": lambda m, o: m.OneCycleLR(
        o, max_lr=[0.5, 0.2], epochs=5, steps_per_epoch=6, pct_start=0.25,
        anneal_strategy="linear", three_phase=True, div_factor=10.0, final_div_factor=100.0),
    "OneCycleLR-nomomentum": lambda m, o: m.OneCycleLR(
        o, max_lr=0.3, total_steps=STEPS + 5, cycle_momentum=False),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=5),
            m.CosineAnnealingLR(o, T_max=20, eta_min=0.001)], milestones=[5]),
    "SequentialLR-three": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=0.8), m.StepLR(o, step_size=3, gamma=0.5),
            m.LambdaLR(o, lambda e: 1.0 + 0.1 * e)], milestones=[4, 12]),
}


def _ours(opt_name="SGD"):
    """A fastopt optimizer with two groups."""
    kw = {"SGD": {"momentum": 0.9}, "Adam": {}, "Adagrad": {}}[opt_name]
    return getattr(fastopt, opt_name)([{"params": [np.zeros(k)], "lr": lr}
                                       for k, lr in zip((3, 2), LRS)], **kw)


def _pair(opt_name):
    """Matching fastopt and torch optimizers, two groups each."""
    ws = [np.zeros(3), np.zeros(2)]
    ts = [torch.zeros(3, dtype=torch.float64, requires_grad=True),
          torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    kw = {"SGD": {"momentum": 0.9}, "Adam": {}, "Adagrad": {}}[opt_name]
    ours = getattr(fastopt, opt_name)([{"params": [w], "lr": lr} for w, lr in zip(ws, LRS)], **kw)
    theirs = getattr(torch.optim, opt_name)([{"params": [t], "lr": lr} for t, lr in zip(ts, LRS)],
                                           **kw)
    return ours, theirs, ws, ts


def _momentum(group):
    return group["betas"][0] if "betas" in group else group.get("momentum")


@needs_torch
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_rates_as_torch(case, opt_name):
    ours, theirs, ws, ts = _pair(opt_name)
    mine, ref = CASES[case](S, ours), CASES[case](TS, theirs)
    if hasattr(ref, "base_lrs"):
        assert mine.base_lrs == pytest.approx(ref.base_lrs, rel=1e-15)
    for step in range(STEPS + 1):
        got, want = mine.get_last_lr(), ref.get_last_lr()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"step {step}")
        for g, t in zip(ours.param_groups, theirs.param_groups):
            assert g["lr"] == pytest.approx(t["lr"], rel=1e-12, abs=0)
            assert g["initial_lr"] == pytest.approx(t["initial_lr"], rel=1e-15)
            if _momentum(t) is not None:
                assert _momentum(g) == pytest.approx(_momentum(t), rel=1e-12)
        assert mine.last_epoch == ref.last_epoch
        if step < STEPS:
            ours.step([np.ones(3), np.ones(2)])
            theirs.step()
            mine.step()
            ref.step()


@needs_torch
@pytest.mark.parametrize("case", ["CosineAnnealingLR", "OneCycleLR", "SequentialLR", "StepLR"])
def test_training_side_by_side_with_torch(case):
    """A fastopt optimizer under a fastopt scheduler follows a torch optimizer
    under torch's scheduler, on the same gradients."""
    ours, theirs, ws, ts = _pair("SGD")
    mine, ref = CASES[case](S, ours), CASES[case](TS, theirs)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        grads = [rng.standard_normal(3), rng.standard_normal(2)]
        for t, g in zip(ts, grads):
            t.grad = torch.from_numpy(g.copy())
        ours.step(grads)
        theirs.step()
        mine.step()
        ref.step()
    for w, t in zip(ws, ts):
        np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_adagrad_works_and_onecycle_needs_momentum_off():
    ours = fastopt.Adagrad([np.zeros(2)], lr=0.5)
    with pytest.raises(ValueError, match="cycle_momentum"):
        S.OneCycleLR(ours, max_lr=1.0, total_steps=10)
    assert "initial_lr" not in ours.param_groups[0]  # nothing written by the failed call
    sched = S.OneCycleLR(ours, max_lr=1.0, total_steps=10, cycle_momentum=False)
    sched.step()
    assert ours.param_groups[0]["lr"] == sched.get_last_lr()[0]


@needs_torch
def test_our_scheduler_on_a_torch_optimizer():
    """The schedulers only need param_groups: they drive torch's optimizers too."""
    theirs = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    sched = S.CosineAnnealingLR(theirs, T_max=5)
    for _ in range(5):
        sched.step()
    assert theirs.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_round_trip(case):
    """A scheduler rebuilt from its state dict (on an optimizer loaded from its
    own) continues exactly as the original does."""
    ours = _ours()
    sched = CASES[case](S, ours)
    for _ in range(9):
        ours.step([np.ones(3), np.ones(2)])
        sched.step()
    state = copy.deepcopy(sched.state_dict())
    opt_state = copy.deepcopy(ours.state_dict())
    assert "optimizer" not in state
    twin = _ours()
    resumed = CASES[case](S, twin)
    twin.load_state_dict(opt_state)
    resumed.load_state_dict(state)
    for _ in range(12):
        sched.step()
        resumed.step()
        assert resumed.get_last_lr() == sched.get_last_lr()
        assert resumed.last_epoch == sched.last_epoch


@needs_torch
@pytest.mark.parametrize("case", ["StepLR", "CosineAnnealingLR-eta_min", "LinearLR-down",
                                  "CosineAnnealingWarmRestarts-mult", "OneCycleLR",
                                  "LambdaLR-list", "SequentialLR"])
def test_loads_torchs_state_dict(case):
    """torch's state dict for the same scheduler loads into ours, which then
    continues with torch's rates."""
    ours, theirs, _, _ = _pair("SGD")
    mine, ref = CASES[case](S, ours), CASES[case](TS, theirs)
    for _ in range(8):
        theirs.step()
        ref.step()
    for g, t in zip(ours.param_groups, theirs.param_groups):
        g.update({k: v for k, v in t.items() if k != "params"})
    mine.load_state_dict(ref.state_dict())
    for _ in range(10):
        ref.step()
        mine.step()
        np.testing.assert_allclose(mine.get_last_lr(), ref.get_last_lr(), rtol=1e-12)


@needs_torch
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_resume_with_last_epoch_matches_torch():
    ours, theirs, _, _ = _pair("SGD")
    for opt in (ours, theirs):
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    mine = S.CosineAnnealingLR(ours, T_max=10, last_epoch=4)
    ref = TS.CosineAnnealingLR(theirs, T_max=10, last_epoch=4)
    for _ in range(10):
        np.testing.assert_allclose(mine.get_last_lr(), ref.get_last_lr(), rtol=1e-12)
        mine.step()
        ref.step()


def test_initial_lr_recorded_once():
    opt = fastopt.SGD([np.zeros(2)], lr=0.2)
    S.StepLR(opt, step_size=2, gamma=0.5)
    opt.param_groups[0]["lr"] = 0.7
    second = S.ExponentialLR(opt, gamma=0.5)
    assert opt.param_groups[0]["initial_lr"] == 0.2 and second.base_lrs == [0.2]


def test_onecycle_past_the_end_raises():
    opt = fastopt.SGD([np.zeros(2)], lr=0.2, momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


def test_cosine_endpoints_exact():
    opt = fastopt.SGD([np.zeros(2)], lr=1.0)
    sched = S.CosineAnnealingLR(opt, T_max=8, eta_min=0.25)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(16):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == 1.0 and lrs[8] == 0.25
    closed = [0.25 + 0.75 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(17)]
    np.testing.assert_allclose(lrs, closed, rtol=1e-12)


@pytest.mark.parametrize("make, exc, match", [
    (lambda o: S.StepLR(o, step_size=0), ValueError, "step_size"),
    (lambda o: S.StepLR(o, step_size=2.0), TypeError, "step_size"),
    (lambda o: S.StepLR(o, step_size=2, gamma="x"), TypeError, "gamma"),
    (lambda o: S.MultiStepLR(o, milestones=3), TypeError, "milestones"),
    (lambda o: S.MultiStepLR(o, milestones=[1, -2]), ValueError, r"milestones\[1\]"),
    (lambda o: S.ExponentialLR(o, gamma=float("nan")), ValueError, "gamma"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    (lambda o: S.CosineAnnealingLR(o, T_max=True), TypeError, "T_max"),
    (lambda o: S.LinearLR(o, start_factor=0), ValueError, "start_factor"),
    (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, "total_iters"),
    (lambda o: S.LambdaLR(o, lr_lambda=3), TypeError, "lr_lambda"),
    (lambda o: S.LambdaLR(o, lr_lambda=[abs, abs]), ValueError, "lr_lambda"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0), ValueError, "T_mult"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0), ValueError, "total_steps"),
    (lambda o: S.OneCycleLR(o, max_lr=[1.0, 2.0], total_steps=5), ValueError, "max_lr"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=5, pct_start=1.5), ValueError,
     "pct_start"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=5, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    # a first phase of no steps (torch divides by zero in it at once)
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=0.1), ValueError,
     "phase 1 of the cycle has no steps"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=1, pct_start=1.0), ValueError,
     "no steps"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, epochs=2, steps_per_epoch=1, pct_start=0.5,
                            anneal_strategy="linear"), ValueError, "no steps"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=20, pct_start=0.05, three_phase=True),
     ValueError, "no steps"),
    (lambda o: S.StepLR(o, step_size=2, last_epoch=3), ValueError, "initial_lr"),
    (lambda o: S.StepLR(object(), step_size=2), TypeError, "param_groups"),
    (lambda o: S.SequentialLR(o, [], milestones=[]), ValueError, "schedulers"),
    (lambda o: S.SequentialLR(o, ["x"], milestones=[]), TypeError, r"schedulers\[0\]"),
])
def test_bad_arguments_change_nothing(make, exc, match):
    opt = fastopt.SGD([np.zeros(2)], lr=0.2, momentum=0.9)
    before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                            for g in opt.param_groups])
    with pytest.raises(exc, match=match):
        make(opt)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before


def test_bad_state_dict_changes_nothing():
    opt = fastopt.SGD([np.zeros(2)], lr=0.2)
    sched = S.StepLR(opt, step_size=2)
    sched.step()
    before = dict(sched.__dict__)
    for bad in (None, {}, {**sched.state_dict(), "base_lrs": [1.0, 2.0]},
                {**sched.state_dict(), "last_epoch": "3"}):
        with pytest.raises((TypeError, ValueError)):
            sched.load_state_dict(bad)
        assert sched.__dict__ == before


# --- the keys a schedule keeps in the groups --------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_groups_edited_with_a_schedule_attached(case):
    # A schedule writes initial_lr (OneCycleLR max_lr, min_lr and the
    # momenta too): add_param_group, edited lists and state dicts take them.
    opt = _ours()
    sched = CASES[case](S, opt)
    a, b = (g["params"][0] for g in opt.param_groups)
    opt.step([np.ones(3), np.ones(2)])
    sched.step()
    opt.add_param_group({"params": [np.zeros(4)], "lr": 0.01})
    opt.param_groups[0]["params"] = [a]
    opt.param_groups[1]["params"] = [b]
    opt.step([np.ones(3), np.ones(2), np.ones(4)])
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    assert all(k in opt.param_groups[0] for k in ("initial_lr",) if k in sd["param_groups"][0])


@pytest.mark.parametrize("case", ["StepLR", "CosineAnnealingLR-eta_min", "OneCycleLR",
                                  "OneCycleLR-linear-3phase"])
@pytest.mark.parametrize("through", ["state_dict", "checkpoint"])
def test_a_loaded_optimizer_resumes_its_schedule(case, through, tmp_path):
    # The schedule's keys travel with the optimizer's state (torch keeps
    # them), so a new scheduler resumes from last_epoch alone.
    grads = [np.full(3, 0.5), np.full(2, -0.25)]
    opt, stop = _ours(), 7
    sched = CASES[case](S, opt)
    for _ in range(stop):
        opt.step(grads)
        sched.step()
    resumed = _ours()
    again = CASES[case](S, resumed)  # made first, as in torch: a constructor sets rates
    if through == "state_dict":
        resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
        for g, h in zip(opt.param_groups, resumed.param_groups):
            h["params"][0][...] = g["params"][0]
    else:
        params = {f"p{k}": g["params"][0] for k, g in enumerate(opt.param_groups)}
        fastopt.save(tmp_path / "c.ckpt", params, opt)
        mine = {f"p{k}": g["params"][0] for k, g in enumerate(resumed.param_groups)}
        fastopt.load(tmp_path / "c.ckpt", mine, resumed)
    schedule_keys = [{k: v for k, v in g.items() if k in ("initial_lr", "max_lr", "min_lr",
                                                           "max_momentum", "base_momentum")}
                     for g in opt.param_groups]
    assert [{k: g[k] for k in keys} for g, keys in zip(resumed.param_groups, schedule_keys)] \
        == schedule_keys
    again.load_state_dict(sched.state_dict())
    if case == "StepLR":  # or from last_epoch alone, which needs initial_lr
        again = S.StepLR(resumed, step_size=4, last_epoch=stop - 1)
    for _ in range(5):
        opt.step(grads)
        resumed.step(grads)
        sched.step()
        again.step()
        assert again.get_last_lr() == sched.get_last_lr()
    for g, h in zip(opt.param_groups, resumed.param_groups):
        np.testing.assert_array_equal(g["params"][0], h["params"][0])


@pytest.mark.parametrize("bad, exc", [("x", TypeError), (-1.0, ValueError),
                                      (float("nan"), ValueError), (True, TypeError)])
def test_bad_schedule_key_in_a_state_dict_changes_nothing(bad, exc):
    opt = _ours()
    sched = S.StepLR(opt, step_size=2)
    opt.step([np.ones(3), np.ones(2)])
    sched.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][1]["initial_lr"] = bad
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(exc, match=r"\['param_groups'\]\[1\]\['initial_lr'\]"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert [{k: v for k, v in g.items() if k != "params"} for g in after["param_groups"]] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before["param_groups"]]


def test_other_unknown_group_keys_are_still_refused():
    opt = _ours()
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['lr_typo'\]"):
        opt.add_param_group({"params": [np.zeros(4)], "lr_typo": 0.1})


# --- loaded scheduler states are checked whole, as the constructors check ------------

def _stepped(case, steps=5):
    opt = _ours()
    sched = CASES[case](S, opt)
    for _ in range(steps):
        sched.step()
    return opt, sched


def _snapshot(sched):
    """The scheduler's attributes and its nested schedulers' (and the
    attributes of its callable objects), copied."""
    subs = getattr(sched, "_schedulers", [])
    lambdas = [dict(fn.__dict__) for fn in getattr(sched, "lr_lambdas", [])]
    return copy.deepcopy([{k: v for k, v in s.__dict__.items()
                           if k not in ("optimizer", "_schedulers", "lr_lambdas")}
                          for s in [sched, *subs]] + lambdas)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_field_of_a_loaded_state_is_checked(case):
    # Each entry of a scheduler's state replaced by a wrong value: refused,
    # the scheduler (and its nested schedulers) unchanged.
    _, sched = _stepped(case)
    good = sched.state_dict()
    for key in good:
        if key == "lr_lambdas" or key.startswith("_schedulers"):
            continue
        for bad in ("x", None, -5):
            sd = copy.deepcopy(good)
            sd[key] = bad
            before = _snapshot(sched)
            try:
                sched.load_state_dict(sd)
            except (TypeError, ValueError):
                assert _snapshot(sched) == before, key
                continue
            # accepted: only where the value is one the constructor allows
            assert key in ("eta_min", "gamma") and bad == -5, (key, bad)
            sched.load_state_dict(good)


@pytest.mark.parametrize("case, key, bad", [
    ("StepLR", "step_size", 0), ("StepLR", "gamma", "0.9"),
    ("CosineAnnealingLR", "T_max", 0), ("LinearLR", "total_iters", 0),
    ("LinearLR", "start_factor", 0.0), ("CosineAnnealingWarmRestarts", "T_i", 0),
    ("OneCycleLR", "total_steps", None), ("OneCycleLR", "_anneal_func_type", "exp"),
    ("MultiStepLR", "milestones", [1, -2]), ("SequentialLR", "_milestones", [1, 2]),
])
def test_a_loaded_state_the_constructor_would_refuse_changes_nothing(case, key, bad):
    _, sched = _stepped(case)
    sd = copy.deepcopy(sched.state_dict())
    sd[key] = bad
    before = _snapshot(sched)
    with pytest.raises((TypeError, ValueError), match=key):
        sched.load_state_dict(sd)
    assert _snapshot(sched) == before


def test_milestones_loaded_as_a_list_work_as_a_counter():
    _, sched = _stepped("MultiStepLR")
    opt, again = _stepped("MultiStepLR", steps=0)
    for group, lr in zip(opt.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    sd = copy.deepcopy(sched.state_dict())
    sd["milestones"] = sorted(sd["milestones"].elements())
    again.load_state_dict(sd)
    for _ in range(20):
        sched.step()
        again.step()
        assert again.get_last_lr() == sched.get_last_lr()


def test_a_bad_nested_state_loads_no_nested_scheduler():
    _, sched = _stepped("SequentialLR-three")
    sd = copy.deepcopy(sched.state_dict())
    sd["_schedulers"][2]["last_epoch"] = "x"
    _, fresh = _stepped("SequentialLR-three", steps=0)
    before = _snapshot(fresh)
    with pytest.raises(TypeError, match=r"\['_schedulers'\]\[2\].*last_epoch"):
        fresh.load_state_dict(sd)
    assert _snapshot(fresh) == before


@pytest.mark.parametrize("bad", [[[1, 2], None], ["x", None], [{"rate": 0.5}, {"x": 1}]])
def test_bad_lambda_attributes_change_nothing(bad):
    _, sched = _stepped("LambdaLR-list")
    sd = copy.deepcopy(sched.state_dict())
    sd["lr_lambdas"] = bad
    before = _snapshot(sched)
    with pytest.raises(TypeError, match="lr_lambdas"):
        sched.load_state_dict(sd)
    assert _snapshot(sched) == before


def test_one_cycle_of_warm_up_only_runs_as_torchs():
    # pct_start=1.0: the last phase has no steps; torch takes it (and divides
    # by zero only at total_steps, where this gives the phase's end value)
    torch = pytest.importorskip("torch")
    opt = fastopt.SGD([np.zeros(2)], lr=0.2, momentum=0.9)
    ours = S.OneCycleLR(opt, max_lr=0.5, total_steps=10, pct_start=1.0)
    t_opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.2, momentum=0.9)
    theirs = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.5, total_steps=10, pct_start=1.0)
    for _ in range(9):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-15)
        ours.step()
        theirs.step()
    restored = S.OneCycleLR(fastopt.SGD([np.zeros(2)], lr=0.2, momentum=0.9), max_lr=0.5,
                            total_steps=10, pct_start=0.5)
    restored.load_state_dict(theirs.state_dict())  # a torch state of such a cycle loads
    assert ours.get_last_lr()[0] == pytest.approx(0.5)
