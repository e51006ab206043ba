"""fastopt.torch: torch.optim-compatible optimizers and flatten_, against torch."""

import copy
import inspect
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")

ROOT = Path(__file__).resolve().parent.parent
CASES = [("SGD", dict(lr=0.1)),
         ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
         ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
         ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1)),
         ("Adagrad", dict(lr=0.1, maximize=True, eps=1e-6)),
         ("Adam", dict(lr=0.01)),
         ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, betas=(0.8, 0.95))),
         ("Adam", dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1, maximize=True)),
         ("AdamW", dict(lr=0.01)),
         ("AdamW", dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.3))]
IDS = [f"{name}-{'-'.join(kw)}" for name, kw in CASES]

X = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
Y = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def model(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 3)).to(dtype)


def backward(m):
    loss = ((m(X.to(next(m.parameters()).dtype)) - Y.to(next(m.parameters()).dtype)) ** 2).mean()
    loss.backward()
    return loss


def groups(m, **kw):
    """Two groups: the weights, the biases (without weight decay where it applies)."""
    ps = list(m.parameters())
    bias = {"params": ps[1::2]}
    if "weight_decay" in kw:
        bias["weight_decay"] = 0.0
    return [{"params": ps[0::2]}, bias]


def rel(a, b):
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


def train(m, opt, steps, clip=None, scheduler=None):
    for _ in range(steps):
        opt.zero_grad()
        backward(m)
        if isinstance(opt, ft._Optimizer):
            opt.step(max_grad_norm=clip)
        else:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip, foreach=False)
            opt.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_twelve_steps_with_cosine_schedule_and_clipping_match_torch(name, kw, flat):
    ms = [model(), model()]
    if flat:
        ft.flatten_(ms[1])
    opts = [getattr(torch.optim, name)(groups(ms[0], **kw), foreach=False, **kw),
            getattr(ft, name)(groups(ms[1], **kw), **kw)]
    for m, opt in zip(ms, opts):
        train(m, opt, 12, clip=0.5, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, 12))
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-10
    assert opts[1].last_grad_norm is not None


@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
@pytest.mark.parametrize("name,kw", [CASES[1], CASES[3], CASES[6], CASES[9]], ids=IDS[1:10:3][:1] + [IDS[3], IDS[6], IDS[9]])
def test_state_dicts_swap_both_ways(name, kw, flat):
    ref, a, b = model(), model(), model()
    if flat:
        ft.flatten_(a)
        ft.flatten_(b)
    ref_opt = getattr(torch.optim, name)(ref.parameters(), foreach=False, **kw)
    fast = getattr(ft, name)(a.parameters(), **kw)
    train(ref, ref_opt, 3, clip=0.5)
    train(a, fast, 3, clip=0.5)
    # fastopt -> torch (through torch.save), and torch -> fastopt
    buffer = io.BytesIO()
    torch.save(fast.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(a.state_dict())
    to_torch = getattr(torch.optim, name)(b.parameters(), foreach=False, **kw)
    to_torch.load_state_dict(torch.load(buffer))
    c = model()
    if flat:
        ft.flatten_(c)
    c.load_state_dict(ref.state_dict())
    to_fast = getattr(ft, name)(c.parameters(), **kw)
    to_fast.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # torch's state dicts alias
    for m, opt in [(ref, ref_opt), (a, fast), (b, to_torch), (c, to_fast)]:
        train(m, opt, 4, clip=0.5)
    for m in (a, b, c):
        assert rel(m.parameters(), ref.parameters()) < 1e-10


@pytest.mark.parametrize("into", ["SGD", "Adagrad", "Adam", "AdamW"])
def test_state_dicts_saved_before_an_argument_existed_load_like_torch(into):
    """Groups without maximize, decoupled_weight_decay, foreach... (an older
    torch's) take the defaults torch's own __setstate__ gives; AdamW takes
    an Adam state dict, with decoupled decay, as torch's does."""
    source = "Adam" if into == "AdamW" else into
    ms = [model(), model(), model()]
    src = getattr(torch.optim, source)(ms[0].parameters(), lr=0.1, weight_decay=0.1)
    backward(ms[0])
    src.step()
    saved = src.state_dict()
    for group in saved["param_groups"]:
        for key in ("maximize", "decoupled_weight_decay", "foreach", "differentiable"):
            group.pop(key, None)
    opts = [getattr(torch.optim, into)(ms[1].parameters(), lr=0.1, foreach=False),
            getattr(ft, into)(ms[2].parameters(), lr=0.1)]
    for m, opt in zip(ms[1:], opts):
        m.load_state_dict(ms[0].state_dict())
        opt.load_state_dict(copy.deepcopy(saved))
        for _ in range(2):
            opt.zero_grad()
            backward(m)
            opt.step()
    assert rel(ms[2].parameters(), ms[1].parameters()) < 1e-12


def test_state_layout_is_torch_s():
    m = model()
    fast, ref = ft.AdamW(m.parameters(), amsgrad=True), torch.optim.AdamW(model().parameters(),
                                                                          amsgrad=True)
    backward(m)
    fast.step()
    sd, ref_sd = fast.state_dict(), ref.state_dict()
    assert sd["param_groups"][0].keys() == ref_sd["param_groups"][0].keys()
    assert sd["param_groups"] == ref_sd["param_groups"]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert all(isinstance(v, torch.Tensor) for v in sd["state"][0].values())
    assert sd["state"][0]["step"].dtype == torch.float32 and sd["state"][0]["step"].item() == 1


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "AdamW"])
def test_constructed_like_torch(name):
    mine = inspect.signature(getattr(ft, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    assert set(mine) == set(theirs)
    for key, p in theirs.items():
        if key != "params":
            assert mine[key].default == p.default, key
    positional = [[k for k, p in ps.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
                  for ps in (mine, theirs)]
    assert positional[0] == positional[1]  # Adagrad(params, lr, ..., eps, foreach)
    a, b = getattr(ft, name)(model().parameters()), getattr(torch.optim, name)(model().parameters())
    assert a.defaults == b.defaults
    assert isinstance(a, torch.optim.Optimizer)


SCHEDULERS = [
    lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, total_steps=10),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 3),
    lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=4),
    lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=2),
            torch.optim.lr_scheduler.ExponentialLR(o, 0.9)], milestones=[2]),
    lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.01, step_size_up=2),
]


@pytest.mark.parametrize("make", SCHEDULERS, ids=["step", "lambda", "onecycle", "warm-restarts",
                                                  "linear", "sequential", "cyclic"])
def test_schedulers_match_torch(make):
    ms = [model(), model()]
    opts = [torch.optim.Adam(ms[0].parameters(), lr=0.01, foreach=False),
            ft.Adam(ms[1].parameters(), lr=0.01)]
    for m, opt in zip(ms, opts):
        train(m, opt, 8, scheduler=make(opt))
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-10


def test_plateau_scheduler_and_closure():
    m = model()
    opt = ft.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)

    def closure():
        opt.zero_grad()
        return backward(m)
    for _ in range(3):
        loss = opt.step(closure)
        sched.step(loss.item())
    assert isinstance(loss, torch.Tensor)


def test_add_param_group_and_parameters_without_grad():
    a, b = model(), model()
    fast = ft.Adagrad(list(a.parameters())[:2], lr=0.1)
    ref = torch.optim.Adagrad(list(b.parameters())[:2], lr=0.1, foreach=False)
    fast.add_param_group({"params": list(a.parameters())[2:], "lr": 0.05})
    ref.add_param_group({"params": list(b.parameters())[2:], "lr": 0.05})
    for m, opt in ((a, fast), (b, ref)):
        opt.zero_grad()
        backward(m)
        list(m.parameters())[1].grad = None  # skipped: parameter and state untouched
        opt.step()
    assert rel(a.parameters(), b.parameters()) < 1e-12
    assert fast.state_dict()["state"][1]["step"].item() == 0


@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
def test_gradients_that_come_and_go_between_steps_match_torch(flat):
    """A parameter without a gradient at one step and with one at the next,
    or the other way: each step steps exactly those with one (a step plan
    kept from the last step must not remember which had one)."""
    ms = [model(), model()]
    if flat:
        ft.flatten_(ms[1])
    opts = [torch.optim.SGD(ms[0].parameters(), lr=0.1, momentum=0.9, foreach=False),
            ft.SGD(ms[1].parameters(), lr=0.1, momentum=0.9)]
    for present in ([0], [0, 2], [2], [0, 1, 2, 3], [1], [1]):
        for m, opt in zip(ms, opts):
            opt.zero_grad()
            backward(m)
            for j, p in enumerate(m.parameters()):
                if j not in present:
                    p.grad = None
            opt.step()
        assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12


@pytest.mark.parametrize("reset", ["state.clear()", "state[p] = {}", "state = defaultdict",
                                   "state[p]['exp_avg'] = t", "del state[p]['step']"])
@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
def test_state_reset_or_replaced_between_steps_is_used_like_torch(reset, flat):
    """A step plan keeps views of the flattened state: a state cleared,
    replaced or edited between steps makes it again, as torch reads it."""
    import collections
    ms = [model(), model()]
    if flat:
        ft.flatten_(ms[1])
    opts = [torch.optim.Adam(ms[0].parameters(), lr=0.01, foreach=False),
            ft.Adam(ms[1].parameters(), lr=0.01)]
    for step in range(3):
        for m, opt in zip(ms, opts):
            opt.zero_grad()
            backward(m)
            opt.step()
            if step == 1:
                p = m[0].weight
                if reset == "state.clear()":
                    opt.state.clear()
                elif reset == "state[p] = {}":
                    opt.state[p] = {}
                elif reset == "state = defaultdict":
                    opt.state = collections.defaultdict(dict)
                elif reset == "state[p]['exp_avg'] = t":
                    opt.state[p]["exp_avg"] = torch.full_like(p, 0.5)
                else:
                    opt.state[p]["step"] = torch.tensor(0.0)  # (torch needs the key)
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12
    saved = io.BytesIO()
    torch.save(opts[1].state_dict(), saved)  # plain dicts: weights_only loads them
    saved.seek(0)
    assert torch.load(saved)["state"].keys() == opts[0].state_dict()["state"].keys()


def test_a_channels_last_weight_is_refused_with_torch_advice():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    conv(torch.randn(1, 3, 5, 5).to(memory_format=torch.channels_last)).sum().backward()
    opt = ft.Adam(conv.parameters(), lr=0.1)
    before = conv.weight.detach().clone()
    with pytest.raises(ValueError, match="contiguous_format"):
        opt.step()
    assert torch.equal(conv.weight, before)


def test_bad_hyperparameters_and_tensors_are_refused():
    with pytest.raises(ValueError, match="lr"):
        ft.Adam(model().parameters(), lr=-1)
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam(model().parameters(), capturable=True)
    with pytest.raises(TypeError, match="unexpected|got an"):
        ft.SGD(model().parameters(), betas=(0.9, 0.9))
    opt = ft.Adam(model().parameters())
    with pytest.raises(ValueError, match="betas"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "betas": (1.5, 0.9)})
    p = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        ft.SGD([p]).step()


def test_a_step_that_raises_changes_nothing():
    m = model()
    opt = ft.Adam(m.parameters(), lr=0.1)
    backward(m)
    opt.step()
    before = [p.detach().clone() for p in m.parameters()]
    last = list(m.parameters())[-1]
    opt.state[last]["exp_avg"] = torch.zeros(99, dtype=torch.float64)  # a broken state
    with pytest.raises(ValueError):
        opt.step()
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.step(max_grad_norm=-1.0)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert opt.state[list(m.parameters())[0]]["step"].item() == 1


# --- flatten_ ----------------------------------------------------------------------------

def test_flatten_makes_views_of_one_buffer_per_dtype():
    m = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 4), "b": torch.nn.Linear(2, 2).double()})
    flat = ft.flatten_(m)
    assert len(flat.buffers) == 2
    data, grad = flat.buffers[(torch.float32, torch.device("cpu"))]
    assert data.numel() == 16 and grad.numel() == 16
    w = m["a"].weight
    assert w.data_ptr() == data.data_ptr() and w.grad.data_ptr() == grad.data_ptr()
    assert torch.all(w.grad == 0)
    with pytest.raises(TypeError, match="float32 and float64"):
        ft.flatten_([torch.zeros(2, dtype=torch.float16)])


def test_flatten_steps_one_kernel_call_per_run(monkeypatch):
    from fastopt import _update as U
    m = model()
    ft.flatten_(m)
    opt = ft.Adam(groups(m), lr=0.1)
    calls = []
    real = U.adam
    monkeypatch.setattr(U, "adam", lambda **kw: (calls.append(kw["p"].size), real(**kw))[1])
    backward(m)
    opt.step()
    assert calls == [5 * 7, 7 * 3, 7, 3]  # groups take every other tensor: runs of one
    calls.clear()
    opt2 = ft.Adam(m.parameters(), lr=0.1)
    opt2.step()
    assert calls == [sum(p.numel() for p in m.parameters())]


def test_flatten_survives_model_zero_grad_and_accumulation():
    ms = [model(), model(), model()]
    ft.flatten_(ms[1])
    ft.flatten_(ms[2])
    opts = [torch.optim.AdamW(ms[0].parameters(), foreach=False),
            ft.AdamW(ms[1].parameters()), ft.AdamW(ms[2].parameters())]
    with pytest.warns(RuntimeWarning, match="zero_grad"):
        for _ in range(3):
            for i, (m, opt) in enumerate(zip(ms, opts)):
                if i == 2:
                    m.zero_grad()  # sets the gradients to None: new ones are copied back
                else:
                    opt.zero_grad()
                backward(m)
                backward(m)  # accumulation over two micro-batches
                if i == 0:
                    torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1, foreach=False)
                    opt.step()
                else:
                    opt.step(max_grad_norm=0.1)
    for m in ms[1:]:
        assert rel(m.parameters(), ms[0].parameters()) < 1e-10
    assert all(p.grad.data_ptr() for p in ms[2].parameters())


def test_flatten_with_an_empty_parameter_matches_torch():
    """torch gives an empty tensor's data pointer as 0, wherever it lies."""
    ps = [[torch.nn.Parameter(torch.full((3,), 1.0, dtype=torch.float64)),
           torch.nn.Parameter(torch.ones(0, 3, dtype=torch.float64)),
           torch.nn.Parameter(torch.ones(2, dtype=torch.float64))] for _ in range(2)]
    ft.flatten_(ps[1])
    opts = [torch.optim.Adam(ps[0], lr=0.1, foreach=False), ft.Adam(ps[1], lr=0.1)]
    for _ in range(3):
        for group, opt in zip(ps, opts):
            opt.zero_grad()
            for p in group:
                p.grad = torch.ones_like(p) if p.grad is None else p.grad.fill_(1.0)
            opt.step()
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(ps[0], ps[1]))


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_an_optimizer_over_part_of_a_flattened_model_keeps_state_for_that_part(name):
    """State spans the optimizer's own parameters in the buffer (fine-tuning
    the head of a model keeps state for the head only), and widens when a
    group is added, as torch steps it."""
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    ms = [model(), model()]
    ft.flatten_(ms[1])
    opts = [getattr(torch.optim, name)(ms[0][2].parameters(), foreach=False, **kw),
            getattr(ft, name)(ms[1][2].parameters(), **kw)]
    for step in range(5):
        if step == 3:
            for m, opt in zip(ms, opts):
                opt.add_param_group({"params": list(m[0].parameters())})
        for m, opt in zip(ms, opts):
            opt.zero_grad()
            backward(m)
            opt.step()
        if step == 1:
            head = sum(p.numel() for p in ms[1][2].parameters())
            for state in opts[1].state.values():
                for value in state.values():
                    if value.dim():
                        assert value.untyped_storage().nbytes() == head * value.element_size()
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12


def test_flattened_models_are_freed():
    """The table of flattened parameters holds them weakly, and so their
    buffers: a model flattened, trained and dropped is freed."""
    import gc
    import weakref
    refs = []
    for _ in range(3):
        m = model(torch.float32)
        ft.flatten_(m)
        opt = ft.AdamW(m.parameters())
        backward(m)
        opt.step()
        refs.append(weakref.ref(m[0].weight))
        del m, opt
    gc.collect()
    assert [r() for r in refs] == [None] * 3


def test_flatten_with_load_state_dict_into_the_model():
    a, b = model(), model()
    ft.flatten_(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(2)
    a.load_state_dict(b.state_dict())
    opt = ft.SGD(a.parameters(), lr=0.1)
    backward(a)
    opt.step()
    ref = torch.optim.SGD(b.parameters(), lr=0.1)
    backward(b)
    ref.step()
    assert rel(a.parameters(), b.parameters()) < 1e-12


def test_moved_parameters_raise_instead_of_stepping_a_stale_buffer():
    m = model()
    ft.flatten_(m)
    opt = ft.Adam(m.parameters())
    backward(m)
    opt.step()
    m.to(torch.float32)
    backward(m)
    with pytest.raises(RuntimeError, match="flatten_ again"):
        opt.step()
    with pytest.raises(RuntimeError, match="flatten_ again"):
        opt.zero_grad()
    m2 = model()
    ft.flatten_(m2)
    list(m2.parameters())[0].data = torch.zeros(7, 5, dtype=torch.float64)
    backward(m2)
    with pytest.raises(RuntimeError, match="no longer lies"):
        ft.SGD(m2.parameters()).step()


def test_import_fastopt_does_not_import_torch_and_the_adapter_says_what_to_install():
    code = textwrap.dedent("""
        import sys
        import fastopt
        assert "torch" not in sys.modules, "import fastopt imported torch"
        sys.modules["torch"] = None  # as if torch were not installed
        try:
            import fastopt.torch
        except ImportError as e:
            assert "pip install torch" in str(e), e
        else:
            raise AssertionError("no ImportError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True,
                            capture_output=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_float32_flat_training_is_close_to_torch_fused():
    ms = [model(torch.float32), model(torch.float32)]
    ft.flatten_(ms[1])
    opts = [torch.optim.AdamW(ms[0].parameters(), lr=0.01, fused=True),
            ft.AdamW(ms[1].parameters(), lr=0.01)]
    for m, opt in zip(ms, opts):
        train(m, opt, 10)
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-5


def test_frozen_and_unused_flattened_parameters_are_skipped_like_torch():
    ms = [model(), model()]
    for m in ms:
        m[0].bias.requires_grad_(False)
    ft.flatten_(ms[1])
    assert ms[1][0].bias.grad is None
    opts = [torch.optim.AdamW(ms[0].parameters(), foreach=False), ft.AdamW(ms[1].parameters())]
    for step in range(4):
        for m, opt in zip(ms, opts):
            opt.zero_grad()
            backward(m)
            if step == 2:
                m[2].weight.grad = None  # this step, this one has no gradient
            opt.step()
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12
    assert len(opts[1].state[ms[1][0].bias]) == 0


@pytest.mark.parametrize("zero", ["optimizer", "flat model"])
def test_parameters_frozen_after_flatten_are_skipped_like_torch(zero):
    ms = [model(), model()]
    flat = ft.flatten_(ms[1])
    opts = [torch.optim.AdamW(ms[0].parameters(), foreach=False), ft.AdamW(ms[1].parameters())]
    for step in range(4):
        if step == 1:
            for m in ms:
                m[2].requires_grad_(False)  # the last layer, frozen from the second step
        for m, opt in zip(ms, opts):
            flat.zero_grad() if zero == "flat model" and m is ms[1] else opt.zero_grad()
            backward(m)
            opt.step()
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12
    assert ms[1][2].weight.grad is None


def test_unused_flattened_parameters_are_stepped_as_torch_after_zeroing_in_place():
    """flatten_ keeps every gradient: a parameter no backward reaches is
    stepped with zeros, as torch steps it after zero_grad(set_to_none=False)."""
    ms = [model(), model()]
    ft.flatten_(ms[1])
    opts = [torch.optim.AdamW(ms[0].parameters(), foreach=False), ft.AdamW(ms[1].parameters())]
    for m, opt in zip(ms, opts):
        opt.zero_grad()
        backward(m)
        opt.step()
    for _ in range(3):
        for m, opt in zip(ms, opts):
            opt.zero_grad(**({"set_to_none": False} if m is ms[0] else {}))
            m[0](X).sum().backward()  # the last layer is not reached
            opt.step()
    assert rel(ms[1].parameters(), ms[0].parameters()) < 1e-12
    assert opts[1].state[ms[1][2].weight]["step"] == 4


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
def test_grad_scale_and_check_finite_match_torch(flat, clip):
    """Loss scaling: the loss times S, the step told ``grad_scale=S``, equals
    torch's step on the unscaled gradients (clipped by their norm); a step
    with a non-finite gradient is skipped whole under ``check_finite``."""
    mine, theirs = model(), model()
    if flat:
        ft.flatten_(mine)
    a = ft.AdamW(mine.parameters(), lr=0.01)
    b = torch.optim.AdamW(theirs.parameters(), lr=0.01, foreach=False)
    scale = 1024.0
    for k in range(6):
        a.zero_grad()
        b.zero_grad()
        (((mine(X) - Y) ** 2).mean() * scale).backward()  # backward()'s loss, scaled
        backward(theirs)
        if k == 3:  # an overflow in the scaled loss
            next(mine.parameters()).grad.view(-1)[0] = float("inf")
            before = [p.detach().clone() for p in mine.parameters()]
            state = copy.deepcopy(a.state_dict())
            a.step(check_finite=True, grad_scale=scale, max_grad_norm=clip)
            assert a.last_step_taken is False
            assert all(torch.equal(x, y) for x, y in zip(before, mine.parameters()))
            assert str(a.state_dict()) == str(state)
            continue
        a.step(check_finite=True, grad_scale=scale, max_grad_norm=clip)
        assert a.last_step_taken is True
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip, foreach=False)
        b.step()
    assert rel(list(mine.parameters()), list(theirs.parameters())) < 1e-10


@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flatten_"])
def test_a_first_step_skipped_by_check_finite_makes_no_state(flat):
    m = model()
    if flat:
        ft.flatten_(m)
    opt = ft.Adam(m.parameters(), lr=0.01)
    backward(m)
    next(m.parameters()).grad.view(-1)[0] = float("nan")
    opt.step(check_finite=True)
    assert opt.last_step_taken is False and len(opt.state) == 0
    assert opt.state_dict()["state"] == {}
    opt.zero_grad()
    backward(m)
    opt.step(check_finite=True)  # and the next step starts from fresh state
    assert all(s["step"] == 1 for s in opt.state.values()) and len(opt.state) == 4


def test_a_parameter_listed_twice_in_a_group_is_refused():
    """torch warns and steps it twice a step (and says it will raise)."""
    m = model()
    w = m[0].weight
    with pytest.raises(ValueError, match="twice"):
        ft.Adam([w, w])
    opt = ft.Adam([m[2].weight])
    with pytest.raises(ValueError, match="twice"):
        opt.add_param_group({"params": iter([w, w])})
    assert len(opt.param_groups) == 1


def test_bad_grad_scale_is_refused_before_anything_changes():
    m = model()
    opt = ft.Adam(m.parameters(), lr=0.01)
    backward(m)
    before = [p.detach().clone() for p in m.parameters()]
    for bad in (0.0, -1.0, float("nan"), 1e-320, "2"):
        with pytest.raises((TypeError, ValueError)):
            opt.step(grad_scale=bad)
    assert all(torch.equal(x, y) for x, y in zip(before, m.parameters()))
    assert not opt.state


def test_flat_state_moved_by_share_memory_is_followed():
    """share_memory_() on a flattened optimizer's state (the Hogwild pattern)
    moves the flat state's storage: the next step must write the new one
    (it wrote freed memory). In a child process, lest it corrupt the heap."""
    code = textwrap.dedent("""
        import torch, fastopt.torch as ft
        torch.manual_seed(0)
        x = torch.randn(8, 64, dtype=torch.float64)
        models = [torch.nn.Linear(64, 64).double() for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        ft.flatten_(models[0])
        opts = [ft.Adam(m.parameters(), lr=0.1) for m in models]
        for step in range(4):
            for m, o in zip(models, opts):
                o.zero_grad()
                m(x).sum().backward()
                o.step()
                if step == 1:
                    for s in o.state.values():
                        s["exp_avg"].share_memory_(); s["exp_avg_sq"].share_memory_()
        same = all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))
        shared = all(s["exp_avg"].is_shared() for s in opts[0].state.values())
        print("same", same, "shared", shared)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "same True shared True" in out.stdout, out.stdout + out.stderr


def test_adagrad_group_of_a_refused_dtype_leaves_nothing_behind():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = ft.Adagrad([p], lr=0.1)
    half = torch.nn.Parameter(torch.randn(3, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"params\[1\].*float16"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2, dtype=torch.float64)),
                                        half]})
    assert len(opt.param_groups) == 1 and list(opt.state) == [p]


def test_flatten_refuses_parameters_sharing_memory():
    base = torch.randn(6, dtype=torch.float64)
    a, b = torch.nn.Parameter(base), torch.nn.Parameter(base[2:])
    with pytest.raises(ValueError, match="share memory"):
        ft.flatten_([a, b])
    assert a.data_ptr() == base.data_ptr() and b.data_ptr() == base[2:].data_ptr()
    c = torch.nn.Parameter(torch.randn(6, dtype=torch.float64)[:3])  # a view alone is fine
    ft.flatten_([c, torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))])


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), 0.5, 1e300])
def test_a_step_count_set_by_hand_is_checked_before_any_write(bad, flat):
    # int(value) took 0.5 as 0 and let -1 divide by zero after the parameter
    # before it had been stepped
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    if flat:
        ft.flatten_(net)
    params = list(net.parameters())
    opt = ft.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.state[params[-1]]["step"] = torch.tensor(bad)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="state 'step' of .* whole number"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("name,hyper", [("SGD", dict(lr=1e39)), ("Adam", dict(lr=1e38)),
                                        ("Adagrad", dict(lr=1e39))])
def test_float32_hyperparameters_beyond_float32s_range_are_refused_like_torch(name, hyper):
    # they made the parameters -inf (torch refuses them when it casts them)
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="beyond float32's range"):
        getattr(ft, name)([w], **hyper)
    opt = getattr(ft, name)([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    before = w.detach().clone()
    opt.param_groups[0]["lr"] = hyper["lr"]
    with pytest.raises(ValueError, match="beyond float32's range"):
        opt.step()
    assert torch.equal(w, before)


@pytest.mark.parametrize("name, lacking", [("Adam", ["exp_avg"]), ("Adagrad", ["sum"]),
                                           ("Adam", ["step"])])
@pytest.mark.parametrize("flat", [False, True])
def test_a_state_lacking_keys_is_refused_before_anything_changes(name, lacking, flat):
    # The first parameter was stepped (and its step counted) before the
    # second's missing moment raised a KeyError; torch raises with nothing
    # changed, and so does fastopt now, naming the keys.
    net = model(torch.float32)
    opt = getattr(ft, name)(net.parameters(), lr=0.1)
    if flat:
        ft.flatten_(net)
    net(X.float()).sum().backward()
    opt.step()
    sd = opt.state_dict()
    last = max(sd["state"])
    for key in lacking:
        del sd["state"][last][key]
    opt.load_state_dict(sd)
    before = [p.detach().clone() for p in net.parameters()]
    steps = [float(opt.state[p]["step"]) for p in list(net.parameters())[:-1]]
    with pytest.raises(ValueError, match="lacks|no 'step'"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert [float(opt.state[p]["step"]) for p in list(net.parameters())[:-1]] == steps


def test_a_refused_step_makes_no_state():
    # The state of the parameters planned before the refused one was made
    # (zeros) and kept; torch's refusals leave none either.
    a = torch.nn.Parameter(torch.ones(4))
    b = torch.nn.Parameter(torch.ones(4, 4).t())  # not contiguous: refused
    opt = ft.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4, 4)
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    assert not any(opt.state.values())
    b.data = b.data.contiguous()
    b.grad = torch.ones(4, 4)
    opt.step()
    assert float(opt.state[a]["step"]) == float(opt.state[b]["step"]) == 1.0


def test_a_numpy_optimizers_torch_state_dict_loads_and_steps():
    # The NumPy classes' own group options (state_dtype...) came along and
    # every later step was refused, where torch.optim loads and steps.
    import fastopt
    n = 5000
    w = np.linspace(-1, 1, n).astype(np.float32)
    numpy_opt = fastopt.Adam([w], lr=0.1, state_dtype="int8")
    numpy_opt.step([np.ones(n, np.float32)])
    results = []
    for cls in (torch.optim.Adam, ft.Adam):
        p = torch.nn.Parameter(torch.ones(n))
        opt = cls([p], lr=0.1)
        opt.load_state_dict(numpy_opt.state_dict(to_torch=True))
        p.grad = torch.ones(n)
        opt.step()
        results.append(p.detach().clone())
    assert "state_dtype" not in opt.param_groups[0]
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
    stored = numpy_opt.state_dict()  # codes and block scales: refused, nothing changed
    with pytest.raises(ValueError, match="int8 state as stored.*to_torch=True"):
        opt.load_state_dict(stored)
    assert float(opt.state[p]["step"]) == 2.0


@pytest.mark.parametrize("case", ["the parameter", "its gradient", "another's state",
                                  "another parameter"])
def test_state_sharing_memory_is_refused_before_anything_changes(case):
    # The NumPy classes refused these; fastopt.torch stepped them, writing one
    # tensor twice a step (or the parameter through its own state).
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.full((4,), 2.0))
    opt = ft.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    target = {"the parameter": b.data, "its gradient": b.grad,
              "another's state": opt.state[a]["exp_avg_sq"], "another parameter": a.data}[case]
    opt.state[b]["exp_avg_sq"] = target
    before = [a.detach().clone(), b.detach().clone(), opt.state[a]["exp_avg"].clone()]
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert torch.equal(before[0], a) and torch.equal(before[1], b)
    assert torch.equal(before[2], opt.state[a]["exp_avg"])
    assert float(opt.state[a]["step"]) == 1.0


def test_sgd_without_momentum_keeps_no_state_and_plans_once():
    # Its empty fresh state was written at every step: a change counted, the
    # plan made anew and the memory sweep run at every step; and the state
    # dict held {} per parameter where torch's holds none.
    net = model(torch.float32)
    opt, ref = ft.SGD(net.parameters(), lr=0.1), torch.optim.SGD(model(torch.float32).parameters(),
                                                                 lr=0.1)
    net(X.float()).sum().backward()
    opt.step()
    count = opt._changes.n
    for _ in range(3):
        opt.step()
    assert opt._changes.n == count
    assert opt.state_dict()["state"] == ref.state_dict()["state"] == {}


def test_step_removed_from_every_flattened_parameter_is_refused():
    # The run read the old counts left in its flat step tensor and stepped.
    net = model(torch.float32)
    ft.flatten_(net)
    opt = ft.Adam(net.parameters(), lr=0.1)
    net(X.float()).sum().backward()
    opt.step()
    for p in net.parameters():
        del opt.state[p]["step"]
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="no 'step'"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("how", ["update", "setdefault", "|="])
def test_state_put_in_by_any_dict_method_is_seen(how):
    # opt.state.update({p: {...}}) stored a plain dict whose later edits were
    # not counted: the flat plan kept stepping the old tensors.
    results = []
    for edit in (True, False):
        a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.full((4,), 2.0))
        ft.flatten_([a, b])
        opt = ft.Adam([a, b], lr=0.1)
        a.grad.fill_(1.0)
        b.grad.fill_(1.0)
        opt.step()
        mine = dict(opt.state[b])
        if edit:
            if how == "update":
                opt.state.update({b: mine})
            elif how == "setdefault":
                del opt.state[b]
                opt.state.setdefault(b, mine)
            else:
                opt.state |= {b: mine}
            opt.step()
            opt.state[b]["exp_avg"] = torch.full((4,), 100.0)
        else:
            opt.step()
            opt.state[b]["exp_avg"] = torch.full((4,), 100.0)
        opt.step()
        results.append(b.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_a_state_shared_while_its_parameter_had_no_gradient_is_refused_later():
    # The sweep ran at the first step after the change, over the parameters
    # stepped then only; b's shared state went unseen once b had a gradient.
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.full((4,), 2.0))
    opt = ft.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    opt.state[b]["exp_avg"] = opt.state[a]["exp_avg"]
    b.grad = None
    opt.step()
    b.grad = torch.ones(4)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[.\].*share memory"):
        opt.step()


def test_a_negated_gradient_is_stepped_as_torch_steps_it():
    results = []
    for cls in (torch.optim.Adam, ft.Adam):
        p = torch.nn.Parameter(torch.ones(4))
        opt = cls([p], lr=0.1)
        p.grad = torch.ones(4)._neg_view()
        opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0])


def test_a_numpy_optimizers_dequantized_state_dict_loads():
    import fastopt
    w = np.linspace(-1, 1, 5000).astype(np.float32)
    numpy_opt = fastopt.Adam([w], lr=0.1, state_dtype="int8")
    numpy_opt.step([np.ones(5000, np.float32)])
    sd = numpy_opt.state_dict(dequantize=True)
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = ft.Adam([p], lr=0.1)
    opt.load_state_dict(sd)
    exp_avg = opt.state[p]["exp_avg"]
    assert isinstance(exp_avg, torch.Tensor)
    assert not np.shares_memory(exp_avg.numpy(), sd["state"][0]["exp_avg"])  # a copy
    np.testing.assert_array_equal(exp_avg.numpy(), sd["state"][0]["exp_avg"])


@pytest.mark.parametrize("how", ["state .data onto another parameter", "state set_() onto itself",
                                 "state set_() onto another's state", "parameter .data onto another"])
def test_memory_moved_in_place_is_checked_again(how):
    # The overlap checks were cached by the state dicts' change count: a
    # tensor re-pointed in place (.data = ..., set_()) counts no change, so
    # the parameter or another's memory was written through it, silently.
    p, q = torch.nn.Parameter(torch.ones(8)), torch.nn.Parameter(torch.full((8,), 2.0))
    opt = ft.Adam([p, q], lr=0.1)
    for _ in range(2):
        p.grad, q.grad = torch.ones(8), torch.ones(8)
        opt.step()
    if how == "state .data onto another parameter":
        opt.state[p]["exp_avg_sq"].data = q.data
    elif how == "state set_() onto itself":
        opt.state[p]["exp_avg"].set_(p.data)
    elif how == "state set_() onto another's state":
        opt.state[p]["exp_avg"].set_(opt.state[q]["exp_avg_sq"])
    else:
        p.data = q.data
    before = q.detach().clone()
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert torch.equal(before, q)
