"""The test table: every flag combination of every optimizer, with ids."""

import itertools

import numpy as np


def _combos(**axes):
    keys = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(keys, values))


def _id(case):
    return "-".join(f"{k}={v}" for k, v in case.items()) or "defaults"


SGD_CASES = [c for c in _combos(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                                weight_decay=[0.0, 0.1], maximize=[False, True])
             if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))
             and not (c["momentum"] == 0 and c["dampening"] != 0)]
SGD_CASES = [{**c, "lr": 0.05} for c in SGD_CASES]

ADAGRAD_CASES = [{**c, "lr": 0.05} for c in _combos(
    lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
    maximize=[False, True])]

# betas=(0.3, 0.6) makes torch's lerp take its other form (weight >= 0.5).
ADAM_CASES = [{**c, "lr": 0.01} for c in _combos(
    weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], amsgrad=[False, True],
    maximize=[False, True], betas=[(0.9, 0.999), (0.3, 0.6)])
    if not (c["weight_decay"] == 0 and c["decoupled_weight_decay"])]

CASES = {"sgd": SGD_CASES, "adagrad": ADAGRAD_CASES, "adam": ADAM_CASES}
ALL = [(name, case) for name, cases in CASES.items() for case in cases]
ALL_IDS = [f"{name}[{_id(case)}]" for name, case in ALL]

DTYPES = [np.float32, np.float64]
TARGETS = ["serial", "parallel"]
SHAPES = [(0,), (), (7,), (100_003,), (3, 4, 5)]


def rtol(dtype):
    """How close fastopt must be to the oracle: a few units in the last place."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 2e-6


def data(shape, dtype, steps, seed=0):
    """A parameter and ``steps`` gradients, random but with repeatable values."""
    rng = np.random.default_rng(seed)
    p = np.asarray(rng.standard_normal(shape), dtype=dtype)
    grads = [np.asarray(rng.standard_normal(shape) * (k + 1), dtype=dtype) for k in range(steps)]
    return p, grads
