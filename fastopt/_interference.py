"""How much a step costs between matrix products, against in isolation.

In a NumPy training loop the optimizer step follows the forward and backward
passes, whose matrix products run on BLAS's own thread pool. OpenBLAS's
worker threads keep spinning for a while after each call (tens of
milliseconds), so the step can find the cores it wants already taken.
``step_between_matmuls`` measures that cost; ``python -m
fastopt._interference`` prints it for a serial-size and a parallel-size
parameter.
"""

import argparse
import statistics
import time

import numpy as np

from .optimizers import SGD, Adagrad, Adam

OPTIMIZERS = {"adam": Adam, "adagrad": Adagrad, "sgd": SGD}


def mlp_matmuls(batch=32, n_in=64, hidden=256, n_out=10, dtype=np.float32, seed=0):
    """A zero-argument function doing the matrix products of one training
    step of a two-layer perceptron (forward and backward), into buffers
    allocated once: the work a NumPy training loop does between steps."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w1 = rng.standard_normal((n_in, hidden)).astype(dtype)
    w2 = rng.standard_normal((hidden, n_out)).astype(dtype)
    h = np.empty((batch, hidden), dtype)
    d_out = np.empty((batch, n_out), dtype)
    d_h = np.empty((batch, hidden), dtype)
    g1 = np.empty_like(w1)
    g2 = np.empty_like(w2)

    def work():
        np.matmul(x, w1, out=h)
        np.matmul(h, w2, out=d_out)
        np.matmul(h.T, d_out, out=g2)
        np.matmul(d_out, w2.T, out=d_h)
        np.matmul(x.T, d_h, out=g1)
    return work


def step_between_matmuls(n, dtype=np.float32, target=None, steps=200, rounds=5, pause=0.2,
                         work=None, optimizer="adam"):
    """Median time of one optimizer step on ``n`` elements, in isolation and
    between matrix products.

    Each round times ``steps`` steps back to back (isolation), then
    ``steps`` steps each after one call of ``work`` (default: the matrix
    products of ``mlp_matmuls()``), then sleeps ``pause`` seconds so that
    every thread pool is idle again before the next round.

    Parameters
    ----------
    n : int
        Number of parameter elements.
    dtype : numpy dtype, optional
    target : {None, "serial", "parallel"}, optional
        Passed to ``Adam``: None lets fastopt choose.
    steps, rounds : int, optional
    pause : float, optional
        Seconds between rounds.
    work : callable, optional
        Zero-argument function run before each step of the second block.
    optimizer : {"adam", "adagrad", "sgd"}, optional
        Stepped with ``lr=1e-6`` (SGD with momentum 0.9).

    Returns
    -------
    dict
        ``isolated_us`` and ``between_us`` (medians over all steps, in
        microseconds), ``ratio`` (median of the per-round ratios of the two
        medians) and ``n``, ``dtype``, ``target``, ``optimizer``.
    """
    work = work or mlp_matmuls(dtype=dtype)
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    g = [(rng.standard_normal(n) * 1e-3).astype(dtype)]
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = OPTIMIZERS[optimizer]([p], lr=1e-6, target=target, **extra)
    opt.step(g)
    work()
    isolated, between, ratios = [], [], []
    for _ in range(rounds):
        time.sleep(pause)
        iso = []
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.step(g)
            iso.append(time.perf_counter() - t0)
        btw = []
        for _ in range(steps):
            work()
            t0 = time.perf_counter()
            opt.step(g)
            btw.append(time.perf_counter() - t0)
        ratios.append(statistics.median(btw) / statistics.median(iso))
        isolated += iso
        between += btw
    return {"n": n, "dtype": np.dtype(dtype).name, "target": target, "optimizer": optimizer,
            "isolated_us": 1e6 * statistics.median(isolated),
            "between_us": 1e6 * statistics.median(between),
            "ratio": statistics.median(ratios)}


def main(argv=None):
    from .bench.cli import whole  # (the bench's parser of element counts)
    parser = argparse.ArgumentParser(description="An optimizer step between matrix products "
                                                 "against in isolation")
    parser.add_argument("--sizes", type=whole(1), nargs="+", default=[19_210, 262_144])
    parser.add_argument("--target", choices=["auto", "serial", "parallel"], default="auto")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--rounds", type=whole(1, 10_000), default=5)
    parser.add_argument("--steps", type=whole(1, 10**7), default=200)
    args = parser.parse_args(argv)
    target = None if args.target == "auto" else args.target
    for n in args.sizes:
        r = step_between_matmuls(n, target=target, steps=args.steps, rounds=args.rounds,
                                 optimizer=args.optimizer)
        print(f"{args.optimizer} n={n:>10,}  {args.target:8s}  isolated {r['isolated_us']:8.1f} us  "
              f"between matmuls {r['between_us']:8.1f} us  ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
