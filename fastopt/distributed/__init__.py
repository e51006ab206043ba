"""Optimizer state sharded across processes over MPI (ZeRO stage 1).

Every rank of an MPI communicator holds the whole parameter vector (a
``FlatParams``) but only its own contiguous slice of the optimizer state, and
updates only that slice; with K ranks each holds at most ``ceil(P / K)``
elements of state instead of P. A step, called by every rank with its own
gradient in ``flat.grad_data``:

1. reduce-scatter the gradients (``MPI.SUM``): each rank receives the sum
   over ranks of its slice, and divides it by K (the rank-averaged gradient);
2. one small all-reduce of two flags: a bad argument, or (with
   ``check_finite``) a NaN or infinity in any rank's averaged slice, stops
   or skips the step on every rank alike;
3. the fused kernel steps the rank's slice (its own fastopt optimizer over
   the parts of the parameter groups that fall in it);
4. all-gather the updated slices, in place, into every rank's parameters.

Steps 1 and 4 move ``2 (K - 1) / K * P * itemsize`` bytes per rank, as one
all-reduce would. Communication uses ``mpi4py`` on the NumPy buffers (no
pickling); fastopt imports it only here, and ``import fastopt`` never does.
Install it with ``pip install "fastopt[mpi]"`` (``mpi4py`` and the ``mpich``
wheel, which brings ``mpiexec``) and run ``mpiexec -n 3 python train.py``.

Checkpoints: :meth:`ZeroOptimizer.state_dict` gathers the state into the
single-process layout (it loads into a plain optimizer over the whole
``FlatParams``, and into a ``ZeroOptimizer`` over any number of ranks);
:meth:`ZeroOptimizer.save` and :meth:`ZeroOptimizer.load` write and read
the file ``fastopt.save(path, flat, optimizer)`` would (rank 0 writes it);
:meth:`ZeroOptimizer.save_shards` writes one file per rank, without
gathering, which :meth:`ZeroOptimizer.load_shards` reads back at any number
of ranks.

Every collective call agrees first: a bad setup or argument on one rank
(different layouts or dtypes across ranks, a bad hyperparameter, a
damaged file) raises on every rank, the others naming the rank that failed,
instead of leaving them waiting forever.
"""

from __future__ import annotations

from ._files import _Files
from ._layout import shard_bounds

__all__ = ["ZeroOptimizer", "shard_bounds"]


class ZeroOptimizer(_Files):
    """A fastopt optimizer whose state is sharded across the ranks of ``comm``.

    Each rank holds ``flat`` whole, and the state of its slice
    ``flat.data[shard[0]:shard[1]]`` only (see :func:`shard_bounds`). After
    every step, all ranks' parameters are bitwise identical, and equal to
    those of one process stepping the rank-averaged gradient (the sum in
    rank order, divided by K): bitwise with 1 or 2 ranks, to the rounding of
    the reduction's order with more.

    Construction, :meth:`step`, the state dicts and checkpoints are
    collective: every rank of ``comm`` calls them, in the same order.

    Parameters
    ----------
    optimizer_class : type
        A fastopt optimizer class (``fastopt.Adam``, ``AdamW``, ``SGD``,
        ``Adagrad``); each rank runs one over its slice (``.optimizer``).
    flat : FlatParams
        The parameters, on the host, with the same layout and dtype on
        every rank. Each rank writes its own gradient into
        ``flat.grad_data`` before :meth:`step`.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    groups : list of dict, optional
        Parameter groups, as the optimizer classes take them: each a dict
        with ``"params"`` (a segment of ``flat`` from ``flat.segment(...)``,
        ``flat`` itself, or a list of them) and optional hyperparameters.
        Default: one group holding ``flat``.
    target : None, "serial" or "parallel"
        The kernel (None: chosen by the slice's size).
    **hyperparameters
        The optimizer's hyperparameters (its defaults for those not given).

    Attributes
    ----------
    optimizer : fastopt.Optimizer or None
        This rank's optimizer over its slice; None where the slice holds no
        parameter of any group (more ranks than elements, say).
    param_groups : list of dict
        The groups over the whole buffer; hyperparameters changed here (a
        learning-rate schedule) apply from the next step. Every rank must
        make the same changes (``step`` refuses groups that differ). They
        keep a schedule's keys (``initial_lr``...), and state dicts and
        checkpoints carry them, as a plain optimizer's do.
    rank, size : int
        This rank, and K.
    shard : tuple of int
        This rank's ``[start, stop)`` of the buffer.

    Raises
    ------
    ImportError
        mpi4py is missing (the message says what to install).
    TypeError, ValueError
        A bad argument on any rank, or ranks whose setups differ (layout,
        dtype, class, groups, hyperparameters), raise on every rank.

    Examples
    --------
    Run with ``mpiexec -n 2 python train.py``::

        flat = fastopt.FlatParams({"w": (784, 256), "b": 256})
        zero = ZeroOptimizer(fastopt.Adam, flat, lr=1e-3)
        for batch in my_shard_of_the_data:
            flat.grad_data[:] = gradient(flat, batch)  # this rank's gradient
            zero.step()                               # same parameters everywhere
    """

    def __repr__(self) -> str:
        lo, hi = self.shard
        return (f"ZeroOptimizer({self.optimizer_class.__name__}, rank {self.rank} of {self.size}, "
                f"elements [{lo}, {hi}) of {self.flat.data.size})")
