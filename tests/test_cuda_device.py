"""The CUDA target on a device: a real GPU, or numba-cuda's simulator.

Without numba-cuda, or without a usable GPU, every test here is skipped.
``tests/test_cuda.py`` runs this file again in a subprocess under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``), so CI without a GPU runs it too::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_device.py

Launches are tiny (4 threads per block, at most 2 blocks), so the simulator
is quick and every thread loops over several elements: the grid-stride loop
is what is tested.
"""

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install 'fastopt[cuda]')")
from numba import cuda  # noqa: E402

if not cuda.is_available():
    pytest.skip("no CUDA GPU; tests/test_cuda.py runs these tests under the CUDA simulator",
                allow_module_level=True)

import fastopt  # noqa: E402
import fastopt.functional as F  # noqa: E402
from fastopt import _cuda, _dispatch, config  # noqa: E402
from cases import ALL, ALL_IDS, DTYPES, data, rtol  # noqa: E402
from conftest import assert_close  # noqa: E402

SIMULATOR = hasattr(cuda, "simulator_init")  # numba.cuda imported under NUMBA_ENABLE_CUDASIM
STEPS = 3
SHAPE = (5, 7)  # 35 elements over 8 threads: each thread updates 4 or 5


@pytest.fixture(autouse=True)
def _tiny_launches():
    config.CUDA_THREADS_PER_BLOCK = 4
    config.CUDA_MAX_BLOCKS = 2


def host(a):
    return a.copy_to_host()


def snapshot(p, state):
    copy = np.copy if isinstance(p, np.ndarray) else host
    return copy(p), {k: copy(v) for k, v in state.items()}


def run_functional(name, case, p, grads, to_array, target=None):
    """Step ``to_array(p)`` with the functional API; return params and state after each step."""
    p = to_array(p.copy())
    history = []
    if name == "sgd":
        buf = to_array(np.empty_like(grads[0]))
        for k, g in enumerate(grads):
            F.sgd(p, to_array(g), buf, first_step=k == 0, target=target, **case)
            history.append(snapshot(p, {"b": buf} if case["momentum"] else {}))
    elif name == "adagrad":
        hp = dict(case)
        s = to_array(np.full_like(grads[0], hp.pop("initial_accumulator_value")))
        for t, g in enumerate(grads, 1):
            F.adagrad(p, to_array(g), s, step=t, target=target, **hp)
            history.append(snapshot(p, {"s": s}))
    else:
        m, v, vmax = (to_array(np.zeros_like(grads[0])) for _ in range(3))
        for t, g in enumerate(grads, 1):
            F.adam(p, to_array(g), m, v, vmax, step=t, target=target, **case)
            history.append(snapshot(p, {"m": m, "v": v, **({"vmax": vmax} if case["amsgrad"] else {})}))
    return history


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", ALL, ids=ALL_IDS)
def test_cuda_matches_cpu(name, case, dtype):
    """Every flag combination: the CUDA kernel gives the CPU kernel's numbers."""
    p, grads = data(SHAPE, dtype, STEPS)
    gpu = run_functional(name, case, p, grads, cuda.to_device)
    cpu = run_functional(name, case, p, grads, np.asarray, target="serial")
    for k, ((gp, gs), (cp, cs)) in enumerate(zip(gpu, cpu), 1):
        assert gp.dtype == dtype and gp.shape == SHAPE
        assert_close(gp, cp, rtol(dtype), f"param after step {k}")
        assert set(gs) == set(cs)
        for key in cs:
            assert gs[key].dtype == dtype
            assert_close(gs[key], cs[key], rtol(dtype), f"{key} after step {k}")


@pytest.mark.parametrize("shape", [(0,), (), (1,), (9,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cuda_shapes(shape, dtype):
    case = dict(lr=0.01, amsgrad=True, weight_decay=0.1)
    p, grads = data(shape, dtype, 2, seed=4)
    gpu = run_functional("adam", case, p, grads, cuda.to_device)
    cpu = run_functional("adam", case, p, grads, np.asarray, target="serial")
    assert gpu[-1][0].shape == shape
    for (gp, gs), (cp, cs) in zip(gpu, cpu):
        assert_close(gp, cp, rtol(dtype))
        for key in cs:
            assert_close(gs[key], cs[key], rtol(dtype), key)


@pytest.mark.parametrize("threads,blocks", [(4, 2), (32, 1), (1, 1), (8, 0)])
def test_any_launch_shape_covers_every_element(threads, blocks):
    """The grid-stride loop: whatever the grid, each element is updated once."""
    config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS = threads, blocks
    n = 101
    p = cuda.to_device(np.zeros(n))
    F.sgd(p, cuda.to_device(np.ones(n)), lr=1.0)
    np.testing.assert_array_equal(host(p), -1.0)


def test_launch_config_caps_blocks():
    config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS = 4, 2
    assert _cuda.launch_config(5) == (2, 4)
    assert _cuda.launch_config(3) == (1, 4)
    assert _cuda.launch_config(10**6) == (2, 4)
    config.CUDA_MAX_BLOCKS = 0
    blocks, threads = _cuda.launch_config(10**9)
    assert threads == 4 and blocks >= 1


def test_dispatch_picks_cuda_for_gpu_arrays():
    d = cuda.to_device(np.zeros(3))
    assert _dispatch.kernel("adam", None, d) is _cuda.launcher("adam")
    assert _dispatch.kernel("adam", "cuda", d) is _cuda.launcher("adam")
    assert _dispatch.kernel("adam", None, np.zeros(3)) is not _cuda.launcher("adam")


# --- optimizer classes and FlatParams -----------------------------------------------

CLASSES = [(fastopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
           (fastopt.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5)),
           (fastopt.Adam, dict(lr=0.01, amsgrad=True, maximize=True)),
           (fastopt.AdamW, dict(lr=0.01))]
CLASS_IDS = [c.__name__ for c, _ in CLASSES]
PARAM_SHAPES = [(6, 5), (7,), ()]


def class_data(dtype=np.float32, steps=3):
    rng = np.random.default_rng(2)
    params = [np.asarray(rng.standard_normal(s), dtype) for s in PARAM_SHAPES]
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in PARAM_SHAPES] for _ in range(steps)]
    grads[1][2] = None  # skipped for one step, as torch skips a parameter without .grad
    return params, grads


@pytest.mark.parametrize("cls,kw", CLASSES, ids=CLASS_IDS)
def test_optimizer_on_gpu_matches_cpu(cls, kw):
    params, grads = class_data()
    mine = [cuda.to_device(p) for p in params]
    ref = [p.copy() for p in params]
    opt = cls([{"params": mine[:1]}, {"params": mine[1:], "lr": kw["lr"] / 2}], **kw)
    ref_opt = cls([{"params": ref[:1]}, {"params": ref[1:], "lr": kw["lr"] / 2}], target="serial", **kw)
    for gs in grads:
        opt.step([None if g is None else cuda.to_device(g) for g in gs])
        ref_opt.step(gs)
    for a, b in zip(mine, ref):
        assert_close(host(a), b, rtol(np.float32))
    for i, state in opt.state.items():
        for key, value in state.items():
            if key != "step":
                assert not isinstance(value, np.ndarray), "state must stay on the GPU"
                assert_close(host(value), ref_opt.state[i][key], rtol(np.float32), key)
            else:
                assert value == ref_opt.state[i][key]


def test_state_dict_to_host_and_back():
    params, grads = class_data(np.float64)
    mine = [cuda.to_device(p) for p in params]
    opt = fastopt.Adam(mine, lr=0.01, amsgrad=True)
    for gs in grads[:2]:
        opt.step([None if g is None else cuda.to_device(g) for g in gs])
    live = opt.state_dict()
    assert not isinstance(live["state"][0]["exp_avg"], np.ndarray)
    saved = opt.state_dict(to_host=True)
    for state in saved["state"].values():
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert isinstance(state[key], np.ndarray)
    # Loaded onto the host, the run goes on as it would have on the GPU.
    host_params = [host(p) for p in mine]
    host_opt = fastopt.Adam(host_params, lr=0.01, amsgrad=True)
    host_opt.load_state_dict(saved)
    # ... and the live GPU dict loads onto another GPU optimizer.
    again = [cuda.to_device(p) for p in host_params]
    gpu_opt = fastopt.Adam(again)
    gpu_opt.load_state_dict(live)
    assert not isinstance(gpu_opt.state[0]["exp_avg"], np.ndarray)
    for gs in grads[2:]:
        opt.step([cuda.to_device(g) for g in gs])
        gpu_opt.step([cuda.to_device(g) for g in gs])
        host_opt.step(gs)
    for a, b, c in zip(mine, again, host_params):
        np.testing.assert_array_equal(host(a), host(b))
        assert_close(host(a), c, rtol(np.float64))


@pytest.mark.parametrize("cls,kw", CLASSES, ids=CLASS_IDS)
def test_flat_params_on_gpu(cls, kw):
    shapes = {"w": (4, 3), "b": 3, "s": ()}
    rng = np.random.default_rng(5)
    arrays = {k: rng.standard_normal(s) for k, s in shapes.items()}
    flat = fastopt.FlatParams.from_arrays(arrays, dtype=np.float32, device="cuda")
    ref = fastopt.FlatParams.from_arrays(arrays, dtype=np.float32)
    assert flat.device == "cuda" and not isinstance(flat.data, np.ndarray)
    assert flat["w"].shape == (4, 3) and flat.grad["s"].shape == ()
    opt = cls([{"params": flat.segment("w")}, {"params": flat.segment("b", "s"), "lr": 0.05}], **kw)
    ref_opt = cls([{"params": ref.segment("w")}, {"params": ref.segment("b", "s"), "lr": 0.05}], **kw)
    for step in range(3):
        g = rng.standard_normal(ref.grad_data.size).astype(np.float32)
        flat.grad_data.copy_to_device(g)
        ref.grad_data[:] = g
        opt.step()
        ref_opt.step()
    assert_close(host(flat.data), ref.data, rtol(np.float32))
    flat.zero_grad()
    np.testing.assert_array_equal(host(flat.grad_data), 0)
    assert "device='cuda'" in repr(flat)


def test_flat_params_starts_at_zero_on_gpu():
    flat = fastopt.FlatParams({"a": (2, 2)}, dtype=np.float64, device="cuda")
    np.testing.assert_array_equal(host(flat.data), 0)
    np.testing.assert_array_equal(host(flat.grad_data), 0)


def test_a_step_copies_nothing_and_does_not_wait(monkeypatch):
    """After the first step (which allocates the state on the GPU), a step only launches kernels."""
    params, grads = class_data()
    mine = [cuda.to_device(p) for p in params]
    dgrads = [[None if g is None else cuda.to_device(g) for g in gs] for gs in grads]
    opt = fastopt.Adam(mine, lr=0.01, amsgrad=True)
    opt.step(dgrads[0])

    def forbidden(*args, **kwargs):
        raise AssertionError("a step copied between host and GPU, or synchronised")

    array_type = type(mine[0])
    monkeypatch.setattr(array_type, "copy_to_host", forbidden)
    monkeypatch.setattr(array_type, "copy_to_device", forbidden)
    monkeypatch.setattr(cuda, "to_device", forbidden)
    monkeypatch.setattr(cuda, "synchronize", forbidden)
    if not SIMULATOR:
        from numba.cuda.cudadrv import driver
        monkeypatch.setattr(driver, "host_to_device", forbidden)
        monkeypatch.setattr(driver, "device_to_host", forbidden)
    for gs in dgrads[1:]:
        opt.step(gs)
    F.sgd(mine[0], dgrads[0][0], lr=0.1)


# --- errors -------------------------------------------------------------------------

def gpu_adam_args(n=5, dtype=np.float64):
    return [cuda.to_device(np.full(n, v, dtype)) for v in (1.0, 0.5, 0.25, 0.125, 2.0)]


@pytest.mark.parametrize("which,name", [(1, "grad"), (2, "exp_avg"), (3, "exp_avg_sq"),
                                        (4, "max_exp_avg_sq")])
def test_host_array_in_a_gpu_call_refused(which, name):
    arrays = gpu_adam_args()
    before = [host(a) for a in arrays]
    arrays[which] = np.ones(5)
    with pytest.raises(TypeError, match=f"{name} is a numpy.ndarray.*param is a GPU array"):
        F.adam(*arrays, step=1, amsgrad=True)
    for a, b in zip(arrays, before):
        if not isinstance(a, np.ndarray):
            np.testing.assert_array_equal(host(a), b)


def test_gpu_array_in_a_host_call_refused():
    p, m, v = np.ones(5), np.zeros(5), np.zeros(5)
    with pytest.raises(TypeError, match="grad is a GPU array.*param is a numpy.ndarray"):
        F.adam(p, cuda.to_device(np.ones(5)), m, v, step=1)
    np.testing.assert_array_equal(p, 1.0)


@pytest.mark.parametrize("which,bad,exc,match", [
    (0, lambda: cuda.to_device(np.ones(5, np.int64)), TypeError, "param.*float32 or float64"),
    (1, lambda: cuda.to_device(np.ones(5, np.float32)), TypeError, "grad.*dtype"),
    (1, lambda: cuda.to_device(np.ones(6)), ValueError, "grad.*shape"),
    (2, lambda: cuda.to_device(np.ones(4)), ValueError, "exp_avg.*shape"),
    (1, lambda: cuda.to_device(np.ones(10))[::2], ValueError, "grad.*C-contiguous"),
    (0, lambda: cuda.to_device(np.ones(10))[::2], ValueError, "param.*C-contiguous"),
])
def test_bad_gpu_arrays_refused(which, bad, exc, match):
    arrays = gpu_adam_args()
    before = [host(a) for a in arrays]
    original = list(arrays)
    arrays[which] = bad()
    with pytest.raises(exc, match=match):
        F.adam(*arrays, step=1, amsgrad=True)
    for a, b in zip(original, before):
        np.testing.assert_array_equal(host(a), b)


def test_overlapping_gpu_arrays_refused():
    buf = cuda.to_device(np.zeros(10))
    with pytest.raises(ValueError, match="share memory"):
        F.adam(buf[:6], cuda.to_device(np.ones(6)), buf[4:], cuda.to_device(np.zeros(6)), step=1)
    with pytest.raises(ValueError, match="share memory"):
        fastopt.SGD([buf[:6], buf[5:]])


def test_cpu_target_with_gpu_arrays_refused():
    p, g = cuda.to_device(np.ones(3)), cuda.to_device(np.ones(3))
    with pytest.raises(ValueError, match="target='parallel'.*GPU"):
        F.sgd(p, g, target="parallel")
    with pytest.raises(ValueError, match="target='serial'.*params\\[0\\]"):
        fastopt.Adam([p], target="serial")
    F.sgd(p, g, lr=1.0, target="cuda")
    np.testing.assert_array_equal(host(p), 0.0)


def test_optimizer_refuses_mixed_params_and_grads():
    p = cuda.to_device(np.ones(3))
    with pytest.raises(TypeError, match="params\\[1\\] is a numpy.ndarray.*params\\[0\\] is a GPU"):
        fastopt.Adam([p, np.ones(3)])
    opt = fastopt.Adam([p])
    with pytest.raises(TypeError, match="grads\\[0\\] is a numpy.ndarray"):
        opt.step([np.ones(3)])
    with pytest.raises(TypeError, match="grads must be a sequence"):
        opt.step(cuda.to_device(np.ones(3)))
    with pytest.raises(TypeError, match="single array"):
        fastopt.Adam(p)
    with pytest.raises(ValueError, match="grads\\[0\\] and params\\[0\\] share memory"):
        opt.step([p])
    np.testing.assert_array_equal(host(p), 1.0)
    assert opt.state == {}


# --- arrays from other libraries (real GPU only) -------------------------------------

needs_gpu = pytest.mark.skipif(SIMULATOR, reason="needs a real GPU (the simulator has no "
                                                   "__cuda_array_interface__)")


class Foreign:
    """Some other library's GPU array: only the interface, and an owner to keep alive."""

    def __init__(self, array, readonly=False, stream=None):
        self._array = array
        desc = dict(array.__cuda_array_interface__)
        desc["data"] = (desc["data"][0], readonly)
        desc["stream"] = stream
        self.__cuda_array_interface__ = desc


@needs_gpu
def test_foreign_arrays_through_the_interface():
    p, g = cuda.to_device(np.ones(1000, np.float32)), cuda.to_device(np.ones(1000, np.float32))
    m, v = cuda.to_device(np.zeros(1000, np.float32)), cuda.to_device(np.zeros(1000, np.float32))
    F.adam(Foreign(p), Foreign(g), Foreign(m), Foreign(v), step=1, lr=0.1)
    assert_close(host(p), np.full(1000, 0.9, np.float32), rtol(np.float32))
    with pytest.raises(ValueError, match="param is read-only"):
        F.adam(Foreign(p, readonly=True), g, m, v, step=2)


@needs_gpu
def test_optimizer_steps_foreign_arrays_through_their_views():
    """The classes step the numba views of interface-only arrays (their dtype,
    stream, ravel), not the foreign objects themselves."""
    p = cuda.to_device(np.ones(1000, np.float32))
    opt = fastopt.Adam([Foreign(p)], lr=0.1)
    opt.step([Foreign(cuda.to_device(np.ones(1000, np.float32)))])
    assert_close(host(p), np.full(1000, 0.9, np.float32), rtol(np.float32))
    assert opt.state[0]["step"] == 1


@needs_gpu
def test_kernels_launch_on_the_exported_stream():
    stream = cuda.stream()
    p = cuda.to_device(np.ones(10))
    view = _cuda.as_array("param", Foreign(p, stream=int(stream)))
    assert int(view.ravel().stream) == int(stream)
    F.sgd(Foreign(p, stream=int(stream)), cuda.to_device(np.ones(10)), lr=1.0)
    stream.synchronize()
    np.testing.assert_array_equal(host(p), 0.0)


@needs_gpu
def test_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    w = torch.randn(100, 10, device="cuda")
    b = torch.randn(10, device="cuda")
    ref = [w.cpu().numpy().copy(), b.cpu().numpy().copy()]
    opt = fastopt.AdamW([w, b], lr=1e-2)
    ref_opt = fastopt.AdamW(ref, lr=1e-2)
    for _ in range(3):
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        opt.step([gw, gb])
        ref_opt.step([gw.cpu().numpy(), gb.cpu().numpy()])
    assert_close(w.cpu().numpy(), ref[0], rtol(np.float32))
    assert_close(b.cpu().numpy(), ref[1], rtol(np.float32))
    with pytest.raises(TypeError, match="params\\[0\\].*__cuda_array_interface__"):
        fastopt.Adam([torch.nn.Parameter(w)])


@needs_gpu
def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    p = cupy.ones(50, dtype=cupy.float64)
    m, v = cupy.zeros_like(p), cupy.zeros_like(p)
    F.adam(p, cupy.ones_like(p), m, v, step=1, lr=0.1)
    # first Adam step: m_hat = v_hat = 1, so p = 1 - lr / (1 + eps) (eps moves it off 0.9)
    assert_close(cupy.asnumpy(p), np.full(50, 1 - 0.1 / (1 + 1e-8)), rtol(np.float64))


# --- guards on the GPU ------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_finite_skips_the_step_on_the_gpu(bad):
    p0 = np.linspace(-1, 1, 35)
    p = cuda.to_device(p0.copy())
    opt = fastopt.Adam([p], lr=0.1)
    g = np.ones(35)
    assert opt.step([cuda.to_device(g)], check_finite=True) is True
    after_one = host(p)
    g[20] = bad
    assert opt.step([cuda.to_device(g)], check_finite=True) is False
    np.testing.assert_array_equal(host(p), after_one)
    assert opt.state[0]["step"] == 1
    assert F.sgd(p, cuda.to_device(g), check_finite=True) is False
    np.testing.assert_array_equal(host(p), after_one)


def test_check_finite_takes_each_gradients_own_scale_past_empty_ones():
    """An empty gradient of another dtype first must not shift the scales:
    float32 overflow under grad_scale < 1 is seen, as on the CPU."""
    results = []
    for to in (np.array, cuda.to_device):
        p1 = to(np.ones(4, np.float32))
        opt = fastopt.SGD([to(np.zeros(0, np.float64)), p1], lr=0.1)
        took = opt.step([to(np.zeros(0, np.float64)), to(np.full(4, 3e38, np.float32))],
                        grad_scale=0.5, check_finite=True)
        results.append((took, (p1 if isinstance(p1, np.ndarray) else host(p1)).tolist()))
    assert results[0] == results[1] == (False, [1.0] * 4)


@pytest.mark.parametrize("alias", ["exp_avg_sq", "param"])
def test_gpu_state_sharing_memory_is_refused(alias):
    p = cuda.to_device(np.ones(6, np.float32))
    opt = fastopt.Adam([p], lr=0.1)
    g = cuda.to_device(np.ones(6, np.float32))
    opt.step([g])
    state = opt.state[0]
    state["exp_avg"] = state["exp_avg_sq"] if alias == "exp_avg_sq" else p
    before = host(p)
    with pytest.raises(ValueError, match=r"params\[0\]'s .*share memory"):
        opt.step([g])
    np.testing.assert_array_equal(host(p), before)


def test_grad_scale_on_the_gpu_matches_the_cpu():
    p0, (g,) = data(SHAPE, np.float32, 1)
    gpu, cpu = cuda.to_device(p0.copy()), p0.copy()
    for p, to in ((gpu, cuda.to_device), (cpu, np.asarray)):
        m, v = to(np.zeros_like(p0)), to(np.zeros_like(p0))
        F.adam(p, to(g * np.float32(512)), m, v, step=1, lr=0.1, grad_scale=512.0)
    assert_close(host(gpu), cpu, rtol(np.float32))
