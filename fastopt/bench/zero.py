"""``mpiexec -n K python -m fastopt.bench.zero``: what a ZeroOptimizer step costs at K ranks.

Prints one ``ZERO {json}`` line (rank 0): the Adam state bytes each rank
holds against one process's, the bytes each rank sends per step
(``2 (K - 1) / K * P * itemsize``, as one ring all-reduce), and the median
times of a whole step, of its reduce-scatter and all-gather alone, and of a
plain ``fastopt.Adam`` step over the whole buffer (the one-process
baseline, taken in the same processes). Run it at K = 1 and K = 2 and
compare; with K ranks on fewer than K free cores, the ranks' busy-polling
waits make the step slower, not faster: the point is the memory.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np

import fastopt

from .cli import whole


def _median_ms(comm: Any, fn: Callable[[], Any], repeats: int) -> float:
    """The median over ``repeats`` of the slowest rank's time for ``fn()``, in ms."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - t0, op=_max(comm)))
    return 1e3 * float(np.median(times))


def _max(comm: Any) -> Any:
    from ..distributed._collectives import _mpi
    return _mpi().MAX


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=whole(1), default=20_000_000,
                        help="elements (default 2e7)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=whole(1, 10_000), default=15)
    args = parser.parse_args(argv)
    from ..distributed import ZeroOptimizer, shard_bounds
    from ..distributed._collectives import _mpi
    try:
        MPI = _mpi()
    except ImportError as e:  # (the message names the extra to install)
        parser.exit(2, f"{parser.prog}: {e}\n")
    comm = MPI.COMM_WORLD
    K, rank, P = comm.Get_size(), comm.Get_rank(), int(args.size)
    dtype = np.dtype(args.dtype)
    flat = fastopt.FlatParams({"x": P}, dtype=dtype)
    flat.grad_data[:] = np.random.default_rng(rank).standard_normal(P).astype(dtype)
    zero = ZeroOptimizer(fastopt.Adam, flat, comm, lr=1e-6)
    step_ms = _median_ms(comm, zero.step, args.repeats)
    counts = [b - a for a, b in shard_bounds(P, K)]
    displs = [a for a, _ in shard_bounds(P, K)]
    recv = np.empty(counts[rank], dtype)
    mpi_type = MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE
    rs_ms = _median_ms(comm, lambda: comm.Reduce_scatter(flat.grad_data, recv, counts, MPI.SUM),
                       args.repeats)
    ag_ms = _median_ms(comm, lambda: comm.Allgatherv(
        MPI.IN_PLACE, [flat.data, counts, displs, mpi_type]), args.repeats)
    state = comm.gather(zero.state_nbytes())
    del zero
    # The one-process baseline: a plain Adam over the whole buffer, on every rank at once.
    plain = fastopt.Adam(flat, lr=1e-6)
    plain_ms = _median_ms(comm, plain.step, args.repeats)
    if rank != 0:
        return None
    import numba
    result = {
        "ranks": K, "elements": P, "dtype": str(dtype), "numba_threads": numba.get_num_threads(),
        "state_bytes_per_rank": state, "single_process_state_bytes": 2 * P * dtype.itemsize,
        "sent_bytes_per_rank_per_step": int(2 * (K - 1) * P * dtype.itemsize // K),
        "step_ms": round(step_ms, 2), "reduce_scatter_ms": round(rs_ms, 2) if K > 1 else None,
        "allgather_ms": round(ag_ms, 2) if K > 1 else None, "plain_adam_step_ms": round(plain_ms, 2)}
    print("ZERO " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
