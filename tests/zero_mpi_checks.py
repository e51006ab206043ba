"""Checks of fastopt.distributed.ZeroOptimizer, run on every rank under mpiexec.

tests/test_distributed.py runs ``mpiexec -n K python tests/zero_mpi_checks.py
PHASE [DIR]`` for K = 1, 2, 3. Phases:

``checks``
    exactness against one process stepping the rank-averaged gradient,
    state dicts, check_finite and grad_scale, schedules, bad setups.
``save DIR``
    train, write a whole checkpoint and shards into DIR, train on and write
    the final parameters to ``DIR/final.npy`` (rank 0).
``resume DIR``
    load the checkpoint (then the shards) written at another K, train on the
    same steps, and compare with ``DIR/final.npy`` bitwise.

Every rank prints ``PASS name`` or ``FAIL name: why`` per check, and the
script exits 1 if any check failed on any rank.
"""

import os
import shutil
import sys
import traceback

import numpy as np

import fastopt

SHAPES = {"w1": (7, 5), "b1": 5, "w2": (5, 3), "b2": 3}  # 58 elements: odd at every K


def groups_of(flat):
    """Three groups; one of two segments; segments cross the shard boundaries."""
    return [{"params": flat.segment("w1")},
            {"params": [flat.segment("b1"), flat.segment("b2")], "weight_decay": 0.0},
            {"params": flat.segment("w2"), "lr": 0.03}]


CONFIGS = [
    (fastopt.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (fastopt.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
    (fastopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (fastopt.Adagrad, dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)),
]


def rank_grad(size, dtype, step, rank, exact):
    """Rank ``rank``'s gradient at ``step``; ``exact``: multiples of 1/16 below
    4 in magnitude, whose sum over ranks is exact in any order."""
    rng = np.random.default_rng([step, rank])
    if exact:
        return (rng.integers(-64, 65, size) / 16).astype(dtype)
    return rng.standard_normal(size).astype(dtype)


def averaged(size, dtype, step, K, exact):
    """The reference: the ranks' gradients summed in rank order, divided by K."""
    total = rank_grad(size, dtype, step, 0, exact)
    for r in range(1, K):
        total += rank_grad(size, dtype, step, r, exact)
    return total / K if K > 1 else total


def pair(cls, hyper, dtype, comm, grouped=True):
    """A ZeroOptimizer and the one-process reference, from the same start."""
    from fastopt.distributed import ZeroOptimizer
    flat = fastopt.FlatParams(SHAPES, dtype=dtype)
    flat.data[:] = np.linspace(-1, 1, flat.data.size)
    ref = fastopt.FlatParams(SHAPES, dtype=dtype)
    ref.data[:] = flat.data
    if grouped:
        zero = ZeroOptimizer(cls, flat, comm, groups=groups_of(flat), **hyper)
        plain = cls(groups_of(ref), **hyper)
    else:
        zero = ZeroOptimizer(cls, flat, comm, **hyper)
        plain = cls(ref, **hyper)
    return flat, zero, ref, plain


def step_both(flat, zero, ref, plain, steps, exact, first=0, **kw):
    K, rank = zero.size, zero.rank
    for t in range(first, first + steps):
        flat.grad_data[:] = rank_grad(flat.data.size, flat.dtype, t, rank, exact)
        ref.grad_data[:] = averaged(flat.data.size, flat.dtype, t, K, exact)
        a, b = zero.step(**kw), plain.step(**kw)
        assert a == b, (a, b)


def same_everywhere(comm, a):
    digests = comm.allgather(a.tobytes())
    assert all(d == digests[0] for d in digests), "ranks' parameters differ"


def assert_state_equal(got, want, bitwise):
    assert got["param_groups"] == want["param_groups"], (got["param_groups"], want["param_groups"])
    assert sorted(got["state"]) == sorted(want["state"])
    for i, s in want["state"].items():
        assert sorted(got["state"][i]) == sorted(s), (i, sorted(got["state"][i]), sorted(s))
        for key, v in s.items():
            if key == "step":
                assert got["state"][i][key] == v
            elif bitwise:
                np.testing.assert_array_equal(got["state"][i][key], v, err_msg=f"{i} {key}")
            else:
                np.testing.assert_allclose(got["state"][i][key], v, rtol=1e-4, atol=1e-6)


# --- the checks --------------------------------------------------------------------------


def check_exact(comm):
    """Bitwise equal to the reference with exactly-summed gradients, at any K."""
    for cls, hyper in CONFIGS:
        for dtype in (np.float32, np.float64):
            for grouped in (True, False):
                flat, zero, ref, plain = pair(cls, hyper, dtype, comm, grouped)
                step_both(flat, zero, ref, plain, 4, exact=True)
                np.testing.assert_array_equal(flat.data, ref.data,
                                              err_msg=f"{cls.__name__} {dtype.__name__}")
                same_everywhere(comm, flat.data)
                assert_state_equal(zero.state_dict(), plain.state_dict(), bitwise=True)


def check_random_gradients(comm):
    """Random gradients: bitwise with 1 or 2 ranks, to rounding with more."""
    for cls, hyper in CONFIGS:
        for dtype in (np.float32, np.float64):
            flat, zero, ref, plain = pair(cls, hyper, dtype, comm)
            step_both(flat, zero, ref, plain, 4, exact=False)
            same_everywhere(comm, flat.data)
            if comm.Get_size() <= 2:
                np.testing.assert_array_equal(flat.data, ref.data)
            else:
                tol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(flat.data, ref.data, rtol=tol, atol=tol)
            assert_state_equal(zero.state_dict(), plain.state_dict(), bitwise=comm.Get_size() <= 2)


def check_state_dict_round_trip(comm):
    """state_dict (on all ranks or on one) loads into a plain optimizer and into
    a fresh ZeroOptimizer; both then go on exactly as the original."""
    from fastopt.distributed import ZeroOptimizer
    cls, hyper = CONFIGS[0]
    flat, zero, ref, plain = pair(cls, hyper, np.float64, comm)
    step_both(flat, zero, ref, plain, 3, exact=True)
    for root in (None, 0, comm.Get_size() - 1):
        sd = zero.state_dict(root=root)
        holder = root is None or comm.Get_rank() == root
        assert (sd is not None) == holder
        flat2 = fastopt.FlatParams(SHAPES, dtype=np.float64)
        flat2.data[:] = flat.data
        zero2 = ZeroOptimizer(cls, flat2, comm, groups=groups_of(flat2), **{**hyper, "lr": 1.0})
        zero2.load_state_dict(sd, root=root)
        assert zero2.param_groups[0]["lr"] == hyper["lr"]
        if holder:
            other = fastopt.FlatParams(SHAPES, dtype=np.float64)
            other.data[:] = flat.data
            loaded = cls(groups_of(other), **hyper)
            loaded.load_state_dict(sd)
            assert_state_equal(loaded.state_dict(), plain.state_dict(), bitwise=True)
        for t in range(3, 5):
            flat2.grad_data[:] = rank_grad(flat.data.size, np.float64, t, comm.Get_rank(), True)
            zero2.step()
        ref2 = fastopt.FlatParams(SHAPES, dtype=np.float64)
        ref2.data[:] = ref.data
        plain2 = cls(groups_of(ref2), **hyper)
        plain2.load_state_dict(plain.state_dict())
        for t in range(3, 5):
            ref2.grad_data[:] = averaged(flat.data.size, np.float64, t, comm.Get_size(), True)
            plain2.step()
        np.testing.assert_array_equal(flat2.data, ref2.data)
    # A plain optimizer's own state dict loads too.
    flat3 = fastopt.FlatParams(SHAPES, dtype=np.float64)
    zero3 = ZeroOptimizer(cls, flat3, comm, groups=groups_of(flat3), **hyper)
    zero3.load_state_dict(plain.state_dict())
    assert_state_equal(zero3.state_dict(), plain.state_dict(), bitwise=True)


def check_finite_and_scale(comm):
    """A non-finite gradient on one rank skips the step on all; grad_scale as the reference."""
    cls, hyper = CONFIGS[0]
    flat, zero, ref, plain = pair(cls, hyper, np.float32, comm)
    step_both(flat, zero, ref, plain, 2, exact=True, check_finite=True, grad_scale=4.0)
    before = flat.data.copy()
    state = zero.state_dict()
    flat.grad_data[:] = 0.0
    if comm.Get_rank() == comm.Get_size() - 1:
        flat.grad_data[3] = np.inf
    assert zero.step(check_finite=True) is False
    np.testing.assert_array_equal(flat.data, before)
    assert_state_equal(zero.state_dict(), state, bitwise=True)
    step_both(flat, zero, ref, plain, 2, exact=True, first=2, check_finite=True)
    np.testing.assert_array_equal(flat.data, ref.data)


def check_schedule(comm):
    """Hyperparameters changed in param_groups apply from the next step."""
    cls, hyper = CONFIGS[1]
    flat, zero, ref, plain = pair(cls, hyper, np.float64, comm)
    step_both(flat, zero, ref, plain, 2, exact=True)
    for group, other in zip(zero.param_groups, plain.param_groups):
        group["lr"] = other["lr"] = group["lr"] * 0.5
    step_both(flat, zero, ref, plain, 2, exact=True, first=2)
    np.testing.assert_array_equal(flat.data, ref.data)


def check_more_ranks_than_elements(comm):
    """Fewer elements than ranks: some ranks hold nothing, and still take part."""
    from fastopt.distributed import ZeroOptimizer
    flat = fastopt.FlatParams({"x": 2}, dtype=np.float64)
    ref = fastopt.FlatParams({"x": 2}, dtype=np.float64)
    zero = ZeroOptimizer(fastopt.Adam, flat, comm, lr=0.1)
    plain = fastopt.Adam(ref, lr=0.1)
    assert (zero.optimizer is None) == (zero.shard[0] == zero.shard[1])
    step_both(flat, zero, ref, plain, 3, exact=True)
    np.testing.assert_array_equal(flat.data, ref.data)
    assert_state_equal(zero.state_dict(), plain.state_dict(), bitwise=True)


def check_state_is_sharded(comm):
    """Each rank holds at most ceil(P/K) elements of each state array."""
    cls, hyper = CONFIGS[0]
    flat, zero, ref, plain = pair(cls, hyper, np.float64, comm, grouped=False)
    step_both(flat, zero, ref, plain, 1, exact=True)
    K, P = comm.Get_size(), flat.data.size
    assert zero.state_nbytes() <= 3 * -(-P // K) * 8
    assert comm.allreduce(zero.state_nbytes()) == 3 * P * 8  # amsgrad: three arrays


def expect_everywhere(comm, kind, words, make):
    """``make()`` raises ``kind`` with ``words`` in its message on every rank."""
    try:
        make()
    except kind as e:
        message = str(e)
        assert all(w in message for w in words), message
    else:
        raise AssertionError(f"no {kind.__name__} on rank {comm.Get_rank()}")
    comm.Barrier()  # every rank got here: nothing hangs


def check_bad_setups(comm):
    """Bad setups and arguments raise on every rank instead of hanging."""
    from mpi4py import MPI

    from fastopt.distributed import ZeroOptimizer
    rank, K = comm.Get_rank(), comm.Get_size()
    last = rank == K - 1
    expect_everywhere(comm, ValueError, ["COMM_NULL"], lambda: ZeroOptimizer(
        fastopt.Adam, fastopt.FlatParams({"x": 3}), MPI.COMM_NULL))
    expect_everywhere(comm, TypeError, ["comm"], lambda: ZeroOptimizer(
        fastopt.Adam, fastopt.FlatParams({"x": 3}), "world"))
    expect_everywhere(comm, TypeError, ["optimizer_class"],
                      lambda: ZeroOptimizer(object if last else fastopt.Adam,
                                            fastopt.FlatParams({"x": 3}), comm))
    expect_everywhere(comm, ValueError, ["lr"], lambda: ZeroOptimizer(
        fastopt.Adam, fastopt.FlatParams({"x": 3}), comm, lr=-1.0 if last else 0.1))
    expect_everywhere(comm, ValueError, ["cuda"], lambda: ZeroOptimizer(
        fastopt.Adam, fastopt.FlatParams({"x": 3}), comm, target="cuda"))
    z = ZeroOptimizer(fastopt.Adam, fastopt.FlatParams({"x": 3}), comm, target="serial")
    try:  # fixed for its life, as an optimizer's (a KeyError at the next step otherwise)
        z.target = "bogus"
    except AttributeError:
        pass
    else:
        raise AssertionError("ZeroOptimizer.target could be assigned")
    assert z.target == "serial"
    for state_dtype in ("int8", "int4", "bfloat16"):  # sharded state is full precision
        expect_everywhere(comm, ValueError, ["state_dtype"], lambda: ZeroOptimizer(
            fastopt.Adam, fastopt.FlatParams({"x": 5000}), comm,
            state_dtype=state_dtype if last else None))
        expect_everywhere(comm, ValueError, ["state_dtype"], lambda: ZeroOptimizer(
            fastopt.SGD, fastopt.FlatParams({"x": 5000}), comm, momentum=0.9,
            state_dtype=state_dtype))
    other = fastopt.FlatParams({"y": 3})
    expect_everywhere(comm, ValueError, ["another FlatParams"], lambda: ZeroOptimizer(
        fastopt.Adam, fastopt.FlatParams({"x": 3}), comm, groups=[{"params": other.segment("y")}]))
    if K > 1:
        shapes = {"x": 4} if last else {"x": 3}
        expect_everywhere(comm, ValueError, ["differ", "size"], lambda: ZeroOptimizer(
            fastopt.Adam, fastopt.FlatParams(shapes), comm))
        dtype = np.float64 if last else np.float32
        expect_everywhere(comm, ValueError, ["differ", "dtype"], lambda: ZeroOptimizer(
            fastopt.Adam, fastopt.FlatParams({"x": 3}, dtype=dtype), comm))
        names = {"a": 1, "b": 2} if last else {"b": 2, "a": 1}
        expect_everywhere(comm, ValueError, ["differ", "entries"], lambda: ZeroOptimizer(
            fastopt.Adam, fastopt.FlatParams(names), comm))
        expect_everywhere(comm, ValueError, ["differ"], lambda: ZeroOptimizer(
            fastopt.Adam, fastopt.FlatParams({"x": 3}), comm, lr=0.2 if last else 0.1))
    flat = fastopt.FlatParams({"x": 5})
    zero = ZeroOptimizer(fastopt.Adam, flat, comm)
    before = flat.data.copy()
    expect_everywhere(comm, ValueError, ["grad_scale"],
                      lambda: zero.step(grad_scale=-1.0 if last else 1.0))
    expect_everywhere(comm, TypeError, ["check_finite"],
                      lambda: zero.step(check_finite="yes" if last else True))
    zero.param_groups[0]["lr"] = -1.0 if last else 0.1
    expect_everywhere(comm, ValueError, ["lr"], zero.step)
    zero.param_groups[0]["lr"] = 0.1
    zero.param_groups[0]["state_dtype"] = "int8" if last else None
    expect_everywhere(comm, ValueError, ["state_dtype"], zero.step)
    zero.param_groups[0]["state_dtype"] = None
    np.testing.assert_array_equal(flat.data, before)
    expect_everywhere(comm, ValueError, ["root"], lambda: zero.state_dict(root=K))
    if K > 1:
        expect_everywhere(comm, ValueError, ["different roots"],
                          lambda: zero.state_dict(root=1 if last else 0))
    bad = zero.state_dict()
    bad["param_groups"][0]["lr"] = -1.0 if last else 0.1
    expect_everywhere(comm, ValueError, ["lr"], lambda: zero.load_state_dict(bad))
    expect_everywhere(comm, ValueError, ["state_dict"], lambda: zero.load_state_dict(
        {"nonsense": 1} if rank == 0 else None, root=0))
    zero.step()  # still in step with each other


def check_ranks_that_disagree_are_refused(comm):
    """Each rank steps its own slice with its own arguments and groups: valid
    but different ones on one rank raise on every rank, nothing changed."""
    from fastopt.distributed import ZeroOptimizer
    if comm.Get_size() == 1:
        return
    last = comm.Get_rank() == comm.Get_size() - 1
    flat = fastopt.FlatParams({"x": 12}, dtype=np.float64)
    zero = ZeroOptimizer(fastopt.Adam, flat, comm, lr=0.05)
    flat.grad_data[:] = 1.0
    zero.step()
    before, state = flat.data.copy(), zero.state_dict()
    flat.grad_data[-1] = np.nan if comm.Get_rank() == 0 else 1.0
    expect_everywhere(comm, ValueError, ["different check_finite"],
                      lambda: zero.step(check_finite=not last))
    flat.grad_data[-1] = 1.0
    expect_everywhere(comm, ValueError, ["grad_scale"],
                      lambda: zero.step(grad_scale=2.0 if last else 1.0))
    zero.param_groups[0]["lr"] = 0.5 if last else 0.05
    expect_everywhere(comm, ValueError, ["hyperparameters"], zero.step)
    zero.param_groups[0]["lr"] = 0.05
    # beyond float32's range: refused on every rank (only the ranks holding
    # the group refused it, and the others waited for ever)
    flat32 = fastopt.FlatParams({"w": 8 * comm.Get_size(), "b": 1}, dtype=np.float32)
    z32 = ZeroOptimizer(fastopt.Adam, flat32, comm, groups=[
        {"params": flat32.segment("w")}, {"params": flat32.segment("b")}], lr=0.1)
    flat32.grad_data[:] = 1.0
    z32.step()
    z32.param_groups[1]["lr"] = 1e38
    expect_everywhere(comm, ValueError, ["float32's range"], z32.step)
    zero.param_groups[0]["initial_lr"] = 2.0 if last else 1.0  # a schedule's key
    expect_everywhere(comm, ValueError, ["schedule"], zero.step)
    del zero.param_groups[0]["initial_lr"]
    # The local optimizer's state edited on one rank only (a state array made
    # read-only): refused on every rank before any rank steps (the others
    # stepped and waited in the all-gather for ever).
    held = zero.optimizer.state[0]["exp_avg"]
    held.flags.writeable = not last
    expect_everywhere(comm, ValueError, ["'exp_avg' is read-only"], zero.step)
    held.flags.writeable = True
    other = zero.state_dict()
    other["param_groups"][0]["lr"] = 0.5
    expect_everywhere(comm, ValueError, ["different state dicts"],
                      lambda: zero.load_state_dict(other if last else state))
    np.testing.assert_array_equal(flat.data, before)
    assert_state_equal(zero.state_dict(), state, bitwise=True)
    zero.step()  # still in step with each other


def check_schedule_resumes_from_a_state_dict(comm):
    """A schedule's keys (initial_lr...) travel in the state dict, as a plain
    optimizer's do: a scheduler made after loading resumes from last_epoch."""
    from fastopt.lr_scheduler import CosineAnnealingLR
    cls, hyper = CONFIGS[0]
    flat, zero, ref, plain = pair(cls, hyper, np.float64, comm)
    schedules = [CosineAnnealingLR(o, T_max=10) for o in (zero, plain)]
    for k in range(3):
        step_both(flat, zero, ref, plain, 1, exact=True, first=k)
        for s in schedules:
            s.step()
    sd = zero.state_dict()
    assert [g.get("initial_lr") for g in sd["param_groups"]] == \
        [g["initial_lr"] for g in plain.state_dict()["param_groups"]]
    flat2, zero2, ref2, plain2 = pair(cls, hyper, np.float64, comm)
    flat2.data[:] = flat.data
    zero2.load_state_dict(sd)
    again = CosineAnnealingLR(zero2, T_max=10, last_epoch=2)
    assert again.get_last_lr() == schedules[1].get_last_lr()


def check_zero_import_hint(comm):
    """The ZeroOptimizer is reachable as fastopt.distributed's."""
    import fastopt.distributed as d
    assert "ZeroOptimizer" in d.__all__


# --- checkpoints across K -------------------------------------------------------------------

RESUME_STEPS = 3


def resume_setup(comm):
    from fastopt.distributed import ZeroOptimizer
    flat = fastopt.FlatParams(SHAPES, dtype=np.float32)
    zero = ZeroOptimizer(fastopt.Adam, flat, comm, groups=groups_of(flat), lr=0.01, amsgrad=True)
    return flat, zero


def global_grad(size, step):
    """The same on every rank, so that the average is the same at any K."""
    return rank_grad(size, np.float32, 100 + step, 0, exact=True)


def train_on(flat, zero, first, steps):
    for t in range(first, first + steps):
        flat.grad_data[:] = global_grad(flat.data.size, t)
        zero.step()


def phase_save(comm, directory):
    flat, zero = resume_setup(comm)
    flat.data[:] = np.linspace(-1, 1, flat.data.size)
    train_on(flat, zero, 0, 4)
    fastopt.save(os.path.join(directory, "full.ckpt"), flat, zero)  # collective, rank 0 writes
    zero.save_shards(os.path.join(directory, "shards"))
    train_on(flat, zero, 4, RESUME_STEPS)
    zero.save_shards(os.path.join(directory, "later"))
    if comm.Get_rank() == 0:
        np.save(os.path.join(directory, "final.npy"), flat.data)


def phase_resume(comm, directory):
    want = np.load(os.path.join(directory, "final.npy"))
    for how in ("full", "shards"):
        flat, zero = resume_setup(comm)
        if how == "full":
            fastopt.load(os.path.join(directory, "full.ckpt"), flat, zero)
        else:
            zero.load_shards(os.path.join(directory, "shards"))
        train_on(flat, zero, 4, RESUME_STEPS)
        np.testing.assert_array_equal(flat.data, want, err_msg=how)
    # A damaged, a missing or a mixed-in shard is refused on every rank, nothing changed.
    shards = os.path.join(directory, "shards")
    name = os.path.join(shards, "shard-0-of-3.fastopt")
    for fault, words in [("damaged", ["shard-0", "checksum"]), ("missing", ["missing"]),
                         ("other save", ["different saves"]),
                         ("lacking an array", ["not those its header names", "exp_avg_sq"])]:
        flat, zero = resume_setup(comm)
        comm.Barrier()
        if comm.Get_rank() == 0:
            os.replace(name, name + ".good")
            if fault == "damaged":
                data = bytearray(open(name + ".good", "rb").read())
                data[200] ^= 1
                with open(name, "wb") as f:
                    f.write(data)
            elif fault == "other save":  # shard 0 of a later save of the same run
                shutil.copyfile(os.path.join(directory, "later", "shard-0-of-3.fastopt"), name)
            elif fault == "lacking an array":  # a sound file without one state array
                from fastopt._ckpt_io import _read
                header, arrays, _ = _read(name + ".good")
                named = dict(zip(header["params"]["names"], arrays))
                del named["state.exp_avg_sq"]
                fastopt.save(name, named)
        comm.Barrier()
        try:
            expect_everywhere(comm, fastopt.CheckpointError, words,
                              lambda: zero.load_shards(shards))
            assert not flat.data.any()
        finally:
            comm.Barrier()
            if comm.Get_rank() == 0:
                os.replace(name + ".good", name)
            comm.Barrier()


def main():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    phase = sys.argv[1]
    if phase == "checks":
        checks = {name: f for name, f in globals().items() if name.startswith("check_")}
        runs = [(name, lambda f=f: f(comm)) for name, f in checks.items()]
        if len(sys.argv) > 2:
            runs = [r for r in runs if r[0] in sys.argv[2:]]
    else:
        runs = [(f"phase_{phase}", lambda: globals()[f"phase_{phase}"](comm, sys.argv[2]))]
    failed = 0
    for name, run in runs:
        try:
            run()
            ok = True
        except Exception:
            ok = False
            print(f"FAIL {name} (rank {comm.Get_rank()} of {comm.Get_size()}):\n"
                  f"{traceback.format_exc()}", flush=True)
        # The ranks agree on the outcome before the next check starts.
        failed += not all(comm.allgather(ok))
        if ok and comm.Get_rank() == 0:
            print(f"PASS {name}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
