"""Data-parallel training across MPI ranks, the Adam state sharded (ZeRO-1).

What it shows
    The digits MLP of ``mlp_digits.py`` (64 -> 256 -> 10, NumPy forward and
    backward by hand, the parameters in one ``fastopt.FlatParams``) trained
    by K processes at once with ``fastopt.distributed.ZeroOptimizer``. Every
    rank holds the parameters and its own shard of the training set; each
    step, each rank computes the gradient of its part of the global batch,
    and ``zero.step()`` averages the gradients across ranks
    (reduce-scatter), steps the rank's slice of the parameters with its
    slice of the Adam state, and all-gathers the updated slices. Each rank
    holds 1/K of the Adam state; the training is the single-process one
    (same global batch size, same accuracy target). It prints the test
    accuracy, the state bytes per rank against one process's, and checks
    that all ranks end with bitwise identical parameters.

How to run
    pip install -e ".[examples,mpi]"
    mpiexec -n 3 python examples/zero_mlp.py            # 30 epochs, 3 ranks
    mpiexec -n 2 python examples/zero_mlp.py --quick    # 10 epochs
    python examples/zero_mlp.py --quick                 # one rank, no mpiexec

(As root, MPICH's mpiexec runs as is; Open MPI's needs
``OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``.)

Rank 0 prints; its last line is ``RESULT {json}``. Every rank exits with
status 1 if the test accuracy is below 95%.
"""

import argparse
import hashlib
import json
import sys
import time

import numpy as np
from mlp_digits import HIDDEN, TARGET_ACCURACY, accuracy, backward, forward, init_params, load_data
from mpi4py import MPI

import fastopt
from fastopt.distributed import ZeroOptimizer
from fastopt.bench.cli import whole


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 epochs instead of 30")
    parser.add_argument("--epochs", type=whole(1), help="number of passes over the training set")
    parser.add_argument("--batch-size", type=whole(1), default=48,
                        help="the global batch, split evenly across the ranks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (10 if args.quick else 30)
    comm = MPI.COMM_WORLD
    rank, K = comm.Get_rank(), comm.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)

    X_train, X_test, y_train, y_test = load_data(args.seed)  # the same split on every rank
    # The same initial parameters on every rank (same seed).
    flat = init_params(X_train.shape[1], HIDDEN, 10, np.random.default_rng(args.seed))
    zero = ZeroOptimizer(fastopt.Adam, flat, comm, lr=args.lr)
    # This rank's shard of the training set, and its part of each global batch.
    mine = np.arange(rank, len(y_train), K)
    per_rank = max(1, args.batch_size // K)
    steps_per_epoch = (len(y_train) // K) // per_rank  # the same on every rank
    say(f"digits: {len(y_train)} train, {len(y_test)} test; MLP 64-{HIDDEN}-10, "
        f"{flat.data.size:,} float32 parameters; {K} rank(s), each {len(mine)} training "
        f"images and {per_rank} of each global batch of {per_rank * K}")

    rng = np.random.default_rng([args.seed, rank])
    t_step = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(mine)
        losses = []
        for s in range(steps_per_epoch):
            batch = order[s * per_rank:(s + 1) * per_rank]
            h, scores = forward(flat, X_train[batch])
            losses.append(backward(flat, X_train[batch], y_train[batch], h, scores))
            t0 = time.perf_counter()
            zero.step()        # average across ranks, step this rank's slice, gather
            t_step.append(time.perf_counter() - t0)
        loss = comm.allreduce(float(np.mean(losses))) / K
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            say(f"epoch {epoch:3d}  train loss {loss:.4f}  "
                f"test accuracy {accuracy(flat, X_test, y_test):.1%}")

    acc = accuracy(flat, X_test, y_test)
    digests = comm.allgather(hashlib.sha256(flat.data.tobytes()).hexdigest())
    identical = len(set(digests)) == 1
    state = comm.allgather(zero.state_nbytes())
    single = 2 * flat.data.nbytes  # Adam: exp_avg and exp_avg_sq
    step_us = 1e6 * float(np.median(t_step))
    say(f"Adam state per rank: {', '.join(f'{b:,}' for b in state)} bytes "
        f"(one process: {single:,}; largest share {max(state) / single:.3f} of it)")
    say(f"parameters identical on all ranks: {identical}; ZeroOptimizer step median "
        f"{step_us:.0f} us (communication included)")
    ok = bool(comm.bcast(acc >= TARGET_ACCURACY and identical and sum(state) == single))
    say(f"test accuracy {acc:.1%} (target {TARGET_ACCURACY:.0%}): {'reached' if ok else 'MISSED'}")
    say("RESULT " + json.dumps({
        "example": "zero_mlp", "ok": ok, "ranks": K, "test_accuracy": round(acc, 4),
        "target_accuracy": TARGET_ACCURACY, "epochs": epochs,
        "steps": epochs * steps_per_epoch, "identical_on_all_ranks": identical,
        "state_bytes_per_rank": state, "single_process_state_bytes": single,
        "step_median_us": round(step_us, 1)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
