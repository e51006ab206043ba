"""Checkpoints: bit-identical resume, refusal of damaged files, and a writer killed mid-save."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastopt
from fastopt import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((20, 10)).astype(np.float32),
            "b": rng.standard_normal(10).astype(np.float32)}


def grads(step):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal((20, 10)).astype(np.float32), rng.standard_normal(10).astype(np.float32)]


@pytest.mark.parametrize("cls,kw", [(fastopt.SGD, dict(lr=0.1, momentum=0.9)),
                                    (fastopt.Adagrad, dict(lr=0.1)),
                                    (fastopt.Adam, dict(lr=0.01, amsgrad=True, betas=(0.8, 0.99)))])
def test_resume_is_bit_identical(tmp_path, cls, kw):
    straight = model()
    opt = cls(list(straight.values()), **kw)
    for k in range(6):
        opt.step(grads(k))

    first = model()
    opt1 = cls(list(first.values()), **kw)
    for k in range(3):
        opt1.step(grads(k))
    path = tmp_path / "ckpt.fo"
    fastopt.save(path, first, opt1)
    del first, opt1

    resumed = {k: np.zeros_like(v) for k, v in model().items()}
    opt2 = cls(list(resumed.values()), lr=5.0)
    fastopt.load(path, resumed, opt2)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    assert opt2.param_groups[0].get("betas", kw.get("betas")) == kw.get("betas")
    for k in range(3, 6):
        opt2.step(grads(k))
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name])


def test_a_dict_of_params_is_matched_by_name_in_any_order(tmp_path):
    first = model()
    opt = fastopt.Adam([first["w"], first["b"]], lr=0.01)
    opt.step(grads(0))
    fastopt.save(tmp_path / "c.fo", first, opt)
    again = {k: np.zeros_like(v) for k, v in reversed(list(model().items()))}  # "b" first
    opt2 = fastopt.Adam([again["w"], again["b"]], lr=0.01)
    fastopt.load(tmp_path / "c.fo", again, opt2)
    for k in range(1, 3):
        opt.step(grads(k))
        opt2.step(grads(k))
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    # its optimizer trains the arrays in another order: refused, nothing loaded
    third = {k: np.zeros_like(v) for k, v in model().items()}
    opt3 = fastopt.Adam([third["b"], third["w"]], lr=0.01)
    with pytest.raises(fastopt.CheckpointError, match="trained params"):
        fastopt.load(tmp_path / "c.fo", third, opt3)
    assert not any(a.any() for a in third.values()) and opt3.state == {}


def test_flat_params_and_list_forms(tmp_path):
    flat = fastopt.FlatParams.from_arrays(model())
    opt = fastopt.Adam(flat)
    flat.grad_data[:] = 1
    opt.step()
    fastopt.save(tmp_path / "f", flat, opt)
    again = fastopt.FlatParams({"w": (20, 10), "b": 10})
    opt2 = fastopt.Adam(again)
    fastopt.load(tmp_path / "f", again, opt2)
    np.testing.assert_array_equal(again.data, flat.data)
    assert opt2.state[0]["step"] == 1
    arrays = [np.arange(3.0), np.ones((2, 2))]
    fastopt.save(tmp_path / "l", arrays)
    target = [np.zeros(3), np.zeros((2, 2))]
    fastopt.load(tmp_path / "l", target)
    np.testing.assert_array_equal(target[0], arrays[0])


@pytest.fixture
def saved(tmp_path):
    params = model()
    opt = fastopt.Adam(list(params.values()))
    opt.step(grads(0))
    path = tmp_path / "ckpt.fo"
    fastopt.save(path, params, opt)
    return path


def fresh():
    params = {k: np.full_like(v, 7.0) for k, v in model().items()}
    return params, fastopt.Adam(list(params.values()))


def assert_untouched(params, opt):
    assert all((v == 7.0).all() for v in params.values())
    assert opt.state == {}


@pytest.mark.parametrize("keep", [0, 10, 17, 30, 200, 1000, -33, -1])
def test_truncated_file_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    params, opt = fresh()
    with pytest.raises(CheckpointError):
        fastopt.load(saved, params, opt)
    assert_untouched(params, opt)


@pytest.mark.parametrize("where", [3, 20, 60, 400, -40, -5])
def test_corrupted_byte_refused(saved, where):
    data = bytearray(saved.read_bytes())
    data[where] ^= 0x10
    saved.write_bytes(bytes(data))
    params, opt = fresh()
    with pytest.raises(CheckpointError):
        fastopt.load(saved, params, opt)
    assert_untouched(params, opt)


def test_trailing_garbage_refused(saved):
    with open(saved, "ab") as f:
        f.write(b"x")
    params, opt = fresh()
    with pytest.raises(CheckpointError, match="trailing"):
        fastopt.load(saved, params, opt)


def with_adam(params):
    return params, fastopt.Adam(list(params.values()))


@pytest.mark.parametrize("change,match", [
    (lambda p, o: ({"w": p["w"]}, o), "params"),
    (lambda p, o: with_adam({"w": p["w"], "b": np.zeros(11, np.float32)}), "params"),
    (lambda p, o: with_adam({"w": p["w"], "b": np.zeros(10)}), "float64"),
    (lambda p, o: ({"w": p["w"], "b": np.zeros(10)}, o), "not one of the given params"),
    (lambda p, o: (p, fastopt.SGD(list(p.values()))), "Adam state"),
])
def test_mismatched_target_refused(saved, change, match):
    params, opt = fresh()
    params2, opt2 = change(params, opt)
    with pytest.raises((CheckpointError, ValueError), match=match):
        fastopt.load(saved, params2, opt2)
    assert_untouched(params, opt)


def test_save_leaves_no_temporary_files(saved):
    assert os.listdir(saved.parent) == [saved.name]


WRITER = textwrap.dedent("""
    import sys, numpy as np, fastopt
    path = sys.argv[1]
    p = np.zeros(4_000_000)
    opt = fastopt.SGD([p], lr=1.0)
    for k in range(1, 10_000):
        p[:] = k
        fastopt.save(path, [p], opt)
        print(k, flush=True)
""")


def test_writer_killed_mid_save_leaves_a_whole_checkpoint(tmp_path):
    """Kill a process that saves 32 MB checkpoints in a loop, at several moments:
    the file at the path always loads, and holds one whole version."""
    path = tmp_path / "ckpt.fo"
    env = {**os.environ, "PYTHONPATH": ROOT}
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one save has completed
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        target = [np.full(4_000_000, -1.0)]
        fastopt.load(path, target)
        version = target[0][0]
        assert version >= 1 and (target[0] == version).all()
        # A killed writer leaves at most its own temporary file: each new writer's
        # first save removed the one before.
        leftovers = [n for n in os.listdir(tmp_path) if n != path.name]
        assert len(leftovers) <= 1 and all(n.endswith(".fastopt-tmp") for n in leftovers)
    fastopt.save(path, [np.zeros(3)])
    assert os.listdir(tmp_path) == [path.name]
