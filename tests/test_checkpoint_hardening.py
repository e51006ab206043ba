"""Checkpoints against hostile files and careless callers: every malformed file is
a CheckpointError before anything large is allocated, every shape round-trips,
and the file operations behave as open() would (symlinks, umask, long names,
bytes paths), leaving no temporary files behind for long."""

import hashlib
import importlib.util
import json
import os
import stat
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import CheckpointError
from fastopt import _ckpt_files, _ckpt_format, _ckpt_io
from fastopt import checkpoint as ckpt

HEAD = len(ckpt.MAGIC) + 8


def split(path):
    """``(header dict, data bytes)`` of a checkpoint file."""
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[len(ckpt.MAGIC):HEAD])
    return json.loads(raw[HEAD:HEAD + length]), raw[HEAD + length:-32]


def forge(path, header, data):
    """Write a file with ``header`` (a dict, or raw bytes) and ``data`` and a valid checksum."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = ckpt.MAGIC + struct.pack("<Q", len(blob)) + blob + data
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())


def make(seed=0):
    """Parameters with a 0-d one, an optimizer that has stepped them once."""
    rng = np.random.default_rng(seed)
    params = {"s": np.array(rng.standard_normal()), "w": rng.standard_normal((3, 2)),
              "b": rng.standard_normal(4)}
    opt = fastopt.Adam(list(params.values()), lr=0.01, amsgrad=True)
    return params, opt


def step(opt, k):
    rng = np.random.default_rng(100 + k)
    opt.step([np.asarray(rng.standard_normal(p.shape)) for p in opt.param_groups[0]["params"]])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The bytes of a checkpoint of ``make()`` after one step."""
    params, opt = make()
    step(opt, 0)
    path = tmp_path_factory.mktemp("pristine") / "c.fo"
    fastopt.save(path, params, opt)
    return path.read_bytes()


@pytest.fixture
def saved(tmp_path, pristine):
    """A path to write damaged files to, holding the pristine one
    (hypothesis tests rewrite it at each example)."""
    path = tmp_path / "c.fo"
    path.write_bytes(pristine)
    return path


def target():
    params = {"s": np.array(7.0), "w": np.full((3, 2), 7.0), "b": np.full(4, 7.0)}
    return params, fastopt.Adam(list(params.values()))


def load_or_refuse(path):
    """Load into fresh arrays: True if it loaded, False on CheckpointError (then
    nothing changed); any other exception fails the test."""
    params, opt = target()
    try:
        fastopt.load(path, params, opt)
    except CheckpointError:
        assert all((v == 7.0).all() for v in params.values()) and opt.state == {}
        return False
    return True


# --- every shape round-trips ---------------------------------------------------------

BASE = np.arange(24.0).reshape(4, 6)


@pytest.mark.parametrize("a", [
    np.array(2.5), np.array(2.5, np.float32), np.zeros(0), np.zeros((3, 0, 2), np.float32),
    np.arange(6.0).reshape(1, 2, 3, 1), BASE[:, ::2], BASE.T, np.asfortranarray(BASE),
    BASE[1:3, 2:5], BASE.astype(">f8"), np.arange(5, dtype=np.int32), np.arange(3, dtype=np.uint8),
    np.ones(3, np.float16), BASE[::-1], np.ones((1,) * 40),
], ids=lambda a: f"{a.dtype.str}{list(a.shape)}{'C' if a.flags.c_contiguous else 'nc'}")
def test_every_shape_round_trips(tmp_path, a):
    fastopt.save(tmp_path / "a", a)
    for out in (np.zeros_like(a, order="C"), np.zeros_like(a, order="F"), np.zeros(a.shape, a.dtype)):
        fastopt.load(tmp_path / "a", out)
        np.testing.assert_array_equal(out, a)


def test_zero_d_parameters_and_their_state_round_trip_bit_identically(tmp_path):
    straight, opt = make()
    for k in range(4):
        step(opt, k)
    first, opt1 = make()
    for k in range(2):
        step(opt1, k)
    fastopt.save(tmp_path / "c", first, opt1)
    resumed, opt2 = target()
    fastopt.load(tmp_path / "c", resumed, opt2)
    assert opt2.state[0]["exp_avg"].shape == ()
    for k in range(2, 4):
        step(opt2, k)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name])


@pytest.mark.parametrize("cls", [fastopt.SGD, fastopt.Adagrad, fastopt.AdamW])
def test_flat_segments_in_groups_resume_bit_identically(tmp_path, cls):
    def build():
        flat = fastopt.FlatParams({"s": (), "w": (3, 2), "b": 4}, dtype=np.float64)
        flat.data[:] = np.linspace(-1, 1, flat.data.size)
        kw = {"momentum": 0.9} if cls is fastopt.SGD else {}
        return flat, cls([{"params": [flat.segment("s", "w")]},
                          {"params": [flat.segment("b")], "lr": 0.05}], lr=0.1, **kw)

    def run(flat, opt, ks):
        for k in ks:
            flat.grad_data[:] = np.random.default_rng(k).standard_normal(flat.data.size)
            opt.step()

    straight, opt = build()
    run(straight, opt, range(4))
    first, opt1 = build()
    run(first, opt1, range(2))
    fastopt.save(tmp_path / "c", first, opt1)
    resumed, opt2 = build()
    resumed.data[:] = 0
    fastopt.load(tmp_path / "c", resumed, opt2)
    run(resumed, opt2, range(2, 4))
    np.testing.assert_array_equal(resumed.data, straight.data)


def test_arrays_of_other_dtypes_are_refused_before_writing(tmp_path):
    for a in (np.array([object()]), np.ones(2, complex), np.ones(2, bool), np.ones(2, np.longdouble)):
        if a.dtype == np.float64:  # longdouble is float64 on some platforms
            continue
        with pytest.raises(TypeError, match=r"params\['0'\]"):
            fastopt.save(tmp_path / "x", [a])
    assert os.listdir(tmp_path) == []


# --- malformed files ----------------------------------------------------------------

def nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("mutate", [
    lambda h: h["arrays"][0].update(dtype="<08"),
    lambda h: h["arrays"][0].update(dtype="|O"),
    lambda h: h["arrays"][0].update(dtype="<c16"),
    lambda h: h["arrays"][0].update(dtype=8),
    lambda h: h["arrays"][0].update(shape=[10**11]),
    lambda h: h["arrays"][0].update(shape=[2**62, 0]),
    lambda h: h["arrays"][0].update(shape=[2**70]),
    lambda h: h["arrays"][0].update(shape=[-1]),
    lambda h: h["arrays"][0].update(shape=[1.0]),
    lambda h: h["arrays"][0].update(shape=[True]),
    lambda h: h["arrays"][0].update(shape="[]"),
    lambda h: h["arrays"][0].update(shape=[1] * 65),
    lambda h: h["arrays"][0].pop("shape"),
    lambda h: h["arrays"].pop(),
    lambda h: h["arrays"].append({"dtype": "<f8", "shape": [0]}),
    lambda h: h.pop("arrays"),
    lambda h: h.pop("params"),
    lambda h: h.update(extra=1),
    lambda h: h["params"].update(kind="set"),
    lambda h: h["params"].update(names="s"),
    lambda h: h["params"].update(layout=[]),
    lambda h: h["optimizer"].pop("class"),
    lambda h: h["optimizer"].update(params=[[0, 0]]),
    lambda h: h["optimizer"].update(params=[[0, -1, 1]] * 3),
    lambda h: h["optimizer"].update(state_dict={"__array__": 0}),
    lambda h: h["optimizer"].update(state_dict={"__array__": 99}),
    lambda h: h["optimizer"].update(state_dict={"__array__": True}),
    lambda h: h["optimizer"].update(state_dict={"__dict__": [[[1], 2]]}),
    lambda h: h["optimizer"].update(state_dict={"__dict__": [[1, 2, 3]]}),
    lambda h: h["optimizer"].update(state_dict={"__set__": []}),
    lambda h: h["optimizer"].update(state_dict={"__tuple__": [], "__dict__": []}),
    lambda h: h["optimizer"].update(state_dict=nested(_ckpt_format._MAX_DEPTH + 5)),
    lambda h: h["optimizer"]["state_dict"]["__dict__"][0][1]["__dict__"][0][1]["__dict__"][0].__setitem__(1, float("inf")),
    lambda h: h["optimizer"]["state_dict"]["__dict__"][0][1]["__dict__"][0][1]["__dict__"][0].__setitem__(1, "x"),
    lambda h: h["optimizer"]["state_dict"]["__dict__"][0][1]["__dict__"].pop(),
    lambda h: h["optimizer"]["state_dict"]["__dict__"].pop(),
    lambda h: h.update(params=None),
    lambda h: h.clear(),
])
def test_malformed_header_with_a_valid_checksum_is_refused(saved, mutate):
    header, data = split(saved)
    mutate(header)
    forge(saved, header, data)
    assert not load_or_refuse(saved)


@pytest.mark.parametrize("blob", [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 100_000,
                                  b'{"params": ' * 50_000, b'{"a": 1e999999}', b"1" * 5000,
                                  b'"\\ud800"', b"NaN"])
def test_header_that_is_not_a_checkpoint_header_is_refused(saved, blob):
    forge(saved, blob, split(saved)[1])
    assert not load_or_refuse(saved)


def test_forged_huge_shape_allocates_nothing(saved):
    header, data = split(saved)
    header["arrays"][-1]["shape"] = [100_000, 1_000_000]  # 745 GiB
    forge(saved, header, data)
    tracemalloc.start()
    try:
        assert not load_or_refuse(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_damaged_large_file_is_refused_in_fixed_memory(tmp_path):
    """The verifying pass hashes in a fixed buffer: a damaged 16 MB file costs
    about 1 MB, not its size (nothing is allocated from its header)."""
    big = [np.ones(2_000_000)]
    path = tmp_path / "big"
    fastopt.save(path, big)
    with open(path, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\x55")
    out = [np.zeros(2_000_000)]
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="checksum"):
            fastopt.load(path, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def paths(value, here=()):
    """Every path to a node of a JSON value."""
    yield here
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in items:
        yield from paths(v, here + (key,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_header_mutations_with_a_valid_checksum_are_refused_or_load(saved, pristine, data):
    saved.write_bytes(pristine)
    header, arrays = split(saved)
    where = data.draw(st.sampled_from(sorted(paths(header), key=repr)), label="path")
    action = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="action")
    if not where:
        header = data.draw(JSON)
    else:
        parent = header
        for key in where[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[where[-1]] = data.draw(JSON, label="value")
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, list):
            parent.insert(where[-1], data.draw(JSON, label="value"))
        else:
            parent[data.draw(st.text(max_size=8), label="key")] = data.draw(JSON, label="value")
    forge(saved, header, arrays)
    tracemalloc.start()
    try:
        load_or_refuse(saved)  # either is fine: some mutations leave a valid checkpoint
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_header_bytes_with_a_valid_checksum_are_refused_or_load(saved, pristine, data):
    raw = pristine
    (length,) = struct.unpack("<Q", raw[len(ckpt.MAGIC):HEAD])
    blob = bytearray(raw[HEAD:HEAD + length])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    forge(saved, bytes(blob), raw[HEAD + length:-32])
    load_or_refuse(saved)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_inserted_or_removed_byte_is_refused(saved, pristine, data):
    raw = bytearray(pristine)
    i = data.draw(st.integers(0, len(raw) - 1), label="at")
    how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    if how == "flip":
        raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "insert":
        raw.insert(i, data.draw(st.integers(0, 255)))
    else:
        del raw[i]
    saved.write_bytes(bytes(raw))
    assert not load_or_refuse(saved)


def test_file_changed_between_the_two_reads_is_refused(tmp_path, monkeypatch):
    saved = tmp_path / "c"
    fastopt.save(saved, [np.zeros(100_000)])  # more than the reader's buffer
    check = _ckpt_io._check_header

    def and_change_the_file(header, size):
        with open(saved, "r+b") as f:
            f.seek(-40, os.SEEK_END)
            f.write(b"\x01")
        return check(header, size)

    monkeypatch.setattr(_ckpt_io, "_check_header", and_change_the_file)
    with pytest.raises(CheckpointError, match="changed while being read"):
        fastopt.load(saved, [np.ones(100_000)])


def test_files_without_the_optimizer_map_still_load(saved):
    header, data = split(saved)
    del header["optimizer"]["params"]
    forge(saved, header, data)
    assert load_or_refuse(saved)


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, "/dev/zero"):
        with pytest.raises(CheckpointError, match="regular file"):
            fastopt.load(path, [np.zeros(3)])


# --- the optimizer must train the params ------------------------------------------

def test_unrelated_optimizer_is_refused_before_anything_is_written(tmp_path):
    params, _ = make()
    others = [p.copy() for p in params.values()]
    bad = [fastopt.Adam(others), fastopt.Adam([params["w"], others[2]]),
           fastopt.Adam([params["w"].reshape(2, 3)])]
    for opt in bad:
        with pytest.raises(ValueError, match="not one of the given params"):
            fastopt.save(tmp_path / "c", params, opt)
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="optimizer"):
        fastopt.save(tmp_path / "c", params, object())
    fastopt.save(tmp_path / "c", params, fastopt.Adam(list(params.values())))
    for opt in bad:
        before = {k: v.copy() for k, v in params.items()}
        with pytest.raises(ValueError, match="not one of the given params"):
            fastopt.load(tmp_path / "c", params, opt)
        assert all((params[k] == before[k]).all() for k in params) and opt.state == {}


def test_optimizer_over_a_subset_of_params_is_accepted(tmp_path):
    params, _ = make()
    opt = fastopt.SGD([params["b"]], lr=0.1, momentum=0.9)
    opt.step([np.ones(4)])
    fastopt.save(tmp_path / "c", params, opt)
    again, _ = target()
    opt2 = fastopt.SGD([again["b"]], lr=0.1, momentum=0.9)
    fastopt.load(tmp_path / "c", again, opt2)
    np.testing.assert_array_equal(opt2.state[0]["momentum_buffer"], opt.state[0]["momentum_buffer"])


def test_optimizer_in_another_order_than_saved_is_refused(tmp_path):
    params = [np.ones(3), np.full(3, 2.0)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(3), np.full(3, 5.0)])
    fastopt.save(tmp_path / "c", params, opt)
    again = [np.zeros(3), np.zeros(3)]
    swapped = fastopt.Adam([again[1], again[0]])
    with pytest.raises(CheckpointError, match="trained params"):
        fastopt.load(tmp_path / "c", again, swapped)
    assert swapped.state == {} and not again[0].any()


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="needs numba-cuda")
def test_gpu_arrays_are_refused_clearly(tmp_path):
    """Under the CUDA simulator (chosen before numba.cuda is imported, so in a
    subprocess): GPU params, or an optimizer of GPU params, are refused."""
    code = f"""if True:
        import os, numpy as np, fastopt
        flat = fastopt.FlatParams({{"w": 4}}, device="cuda")
        opt = fastopt.SGD(flat, lr=0.1)
        for args, error, words in [((flat,), TypeError, "host arrays"),
                                   (([np.zeros(4)], opt), ValueError, "host arrays only")]:
            try:
                fastopt.save({str(tmp_path / "c")!r}, *args)
            except error as e:
                assert words in str(e), e
            else:
                raise AssertionError("saved")
        assert os.listdir({str(tmp_path)!r}) == []
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == "ok", result.stdout + result.stderr[-3000:]


def test_flat_params_optimizer_must_use_that_buffer(tmp_path):
    flat = fastopt.FlatParams({"w": (3, 2), "b": 4})
    other = fastopt.FlatParams({"w": (3, 2), "b": 4})
    for opt in (fastopt.SGD(other, lr=0.1), fastopt.SGD([other.segment("b")], lr=0.1)):
        with pytest.raises(ValueError, match="segment of its buffer"):
            fastopt.save(tmp_path / "c", flat, opt)
    fastopt.save(tmp_path / "c", flat, fastopt.SGD([flat.segment("b"), flat.segment("w")], lr=0.1))


# --- file operations ----------------------------------------------------------------

def test_saving_through_a_symlink_replaces_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "c.fo"
    link = tmp_path / "link.fo"
    link.symlink_to(real)  # dangling: the first save creates the target
    for value in (1.0, 2.0):
        fastopt.save(link, [np.full(3, value)])
        assert link.is_symlink() and os.readlink(link) == str(real)
        out = [np.zeros(3)]
        fastopt.load(real, out)
        assert (out[0] == value).all()
    assert sorted(os.listdir(tmp_path / "real")) == ["c.fo"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_new_files_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        fastopt.save(tmp_path / "c", [np.zeros(3)])
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == 0o666 & ~umask


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "c"
    fastopt.save(path, [np.zeros(3)])
    os.chmod(path, 0o640)
    fastopt.save(path, [np.ones(3)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("length", [250, 255])
def test_long_file_names(tmp_path, length):
    path = tmp_path / ("c" * length)
    fastopt.save(path, [np.arange(3.0)])
    out = [np.zeros(3)]
    fastopt.load(path, out)
    assert out[0][2] == 2.0 and os.listdir(tmp_path) == [path.name]


class Where:
    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


@pytest.mark.parametrize("form", [str, os.fsencode, Where, lambda p: Where(os.fsencode(p))])
def test_path_forms(tmp_path, form):
    path = form(str(tmp_path / "c\u00e9.fo"))
    fastopt.save(path, [np.arange(3.0)])
    out = [np.zeros(3)]
    fastopt.load(path, out)
    assert out[0][2] == 2.0


def test_bad_paths_are_refused(tmp_path):
    for path, error in ((3, TypeError), (None, TypeError), ("", ValueError),
                        (str(tmp_path) + os.sep, IsADirectoryError), (tmp_path, IsADirectoryError)):
        with pytest.raises(error):
            fastopt.save(path, [np.zeros(3)])
    assert os.listdir(tmp_path) == []


# --- leftover temporary files ---------------------------------------------------------

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def leftover(folder, name, pid, host=None, age=0.0):
    path = folder / _ckpt_files._temp_name(name, host or _ckpt_files._host_tag(), pid)
    path.write_bytes(b"partial")
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path.name


def test_save_removes_only_stale_temporary_files_of_its_target(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = _ckpt_files._STALE_AGE_S + 60
        removed = [leftover(tmp_path, "c.fo", dead_pid()),
                   leftover(tmp_path, "c.fo", dead_pid(), age=old),
                   leftover(tmp_path, "c.fo", 12345, host="0" * 8, age=old)]
        kept = [leftover(tmp_path, "c.fo", sleeper.pid),        # a live writer
                leftover(tmp_path, "c.fo", sleeper.pid, age=old),  # a slow live writer
                leftover(tmp_path, "c.fo", os.getpid(), age=old),  # another thread here
                leftover(tmp_path, "c.fo", dead_pid(), host="0" * 8),  # elsewhere, recent
                leftover(tmp_path, "other.fo", dead_pid()),     # another target
                "c.fo.1234.tmp", ".c.fo.fastopt-tmp"]           # not ours
        for name in kept[-2:]:
            (tmp_path / name).write_bytes(b"x")
        (tmp_path / _ckpt_files._temp_name("c.fo", _ckpt_files._host_tag(), dead_pid())).mkdir()
        fastopt.save(tmp_path / "c.fo", [np.zeros(3)])
    finally:
        sleeper.kill()
        sleeper.wait()
    names = set(os.listdir(tmp_path))
    assert not names & set(removed)
    assert set(kept) <= names and len(names) == len(kept) + 2


def test_temporary_names_are_short_and_recognised(tmp_path):
    for name in ("c" * 255, "x", "\u00e9" * 127):
        tmp = _ckpt_files._temp_name(name, _ckpt_files._host_tag(), 4_194_304)
        assert len(tmp) < 60 and _ckpt_files._TMP_NAME.match(tmp)


def test_a_schedule_key_set_badly_is_refused_when_saved_or_added_not_when_loaded():
    # such a group was stepped and saved, and its checkpoint then refused at load
    opt = fastopt.SGD([np.zeros(3)], lr=0.1)
    opt.param_groups[0]["initial_lr"] = "x"
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['initial_lr'\]"):
        opt.state_dict()
    opt.param_groups[0]["initial_lr"] = 0.1
    with pytest.raises(ValueError, match="initial_lr"):
        opt.add_param_group({"params": [np.zeros(2)], "initial_lr": -3.0})
    assert len(opt.param_groups) == 1
