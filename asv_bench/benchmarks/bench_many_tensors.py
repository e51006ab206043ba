"""Many small tensors: one kernel over a flat buffer against a loop over arrays.

A model of 2,000 tensors of 5,000 float32 (1e7 in all), stepped by Adam:
``flat`` keeps them as views of one ``fastopt.FlatParams`` buffer and steps
it in one kernel call (``opt.step()``); ``list`` is the class API over
2,000 separate arrays, one kernel call each. ``flat`` skips until fastopt
has FlatParams.
"""

import numpy as np

import fastopt

from .common import LR, REPEAT, memo, require_flat_params, warm

TENSORS, TENSOR_SIZE = 2_000, 5_000


def _flat_step():
    require_flat_params()
    flat = fastopt.FlatParams({f"w{i}": (TENSOR_SIZE,) for i in range(TENSORS)},
                              dtype=np.float32)
    rng = np.random.default_rng(0)
    flat.data[:] = rng.standard_normal(flat.data.size, dtype=np.float32)
    flat.grad_data[:] = rng.standard_normal(flat.grad_data.size, dtype=np.float32) * 1e-3
    opt = fastopt.Adam(flat, lr=LR)
    return lambda: opt.step()


def _list_step():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(TENSOR_SIZE, dtype=np.float32) for _ in range(TENSORS)]
    grads = [rng.standard_normal(TENSOR_SIZE, dtype=np.float32) * np.float32(1e-3)
             for _ in range(TENSORS)]
    opt = fastopt.Adam(params, lr=LR)
    return lambda: opt.step(grads)


class ManyTensors:
    params = [["flat", "list"]]
    param_names = ["layout"]
    version = "1"
    repeat = REPEAT

    def setup(self, layout):
        if layout == "flat":
            require_flat_params()

        def build():
            fn = _flat_step() if layout == "flat" else _list_step()
            warm(fn)
            return fn

        self.step = memo(("many", layout), build)

    def time_step(self, layout):
        self.step()
