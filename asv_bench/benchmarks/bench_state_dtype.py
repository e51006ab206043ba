"""Adam's step with reduced-precision state (``state_dtype``): time and bytes kept.

One float32 parameter array per size and CPU target, for each state dtype
(float32 is the baseline). Skips on a fastopt without ``state_dtype``, and
"bfloat16" without ml_dtypes.
"""

import numpy as np

import fastopt

from .common import LR, REPEAT, SIZES, memo, require_arguments, require_target, warm

STATE_DTYPES = ["float32", "bfloat16", "int8", "int4"]


def _require(state_dtype):
    require_arguments(fastopt.Adam, {"state_dtype": state_dtype})
    if state_dtype == "bfloat16":
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            raise NotImplementedError("ml_dtypes is not installed (fastopt[lowp])") from None


def _optimizer(state_dtype, n, target):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    opt = fastopt.Adam([p], lr=LR, state_dtype=state_dtype, target=target)
    return opt, (lambda: opt.step([g]))


class StateDtype:
    """``opt.step([g])`` of Adam with each state dtype, per size and CPU target."""

    params = [STATE_DTYPES, SIZES, ["serial", "parallel"]]
    param_names = ["state_dtype", "n", "target"]
    version = "1"
    repeat = REPEAT

    def setup(self, state_dtype, n, target):
        require_target(target)
        _require(state_dtype)
        if state_dtype in ("int8", "int4") and n < 4096:
            raise NotImplementedError("tensors below 4,096 elements keep float32 state")

        def build():
            opt, step = _optimizer(state_dtype, n, target)
            warm(step)
            return opt, step

        self.opt, self.step = memo(("state_dtype", state_dtype, n, target), build)

    def time_step(self, state_dtype, n, target):
        self.step()

    def track_state_bytes_per_param(self, state_dtype, n, target):
        """Bytes of optimizer state (arrays and block scales) per parameter."""
        arrays = [v for v in self.opt.state[0].values() if isinstance(v, np.ndarray)]
        return sum(a.nbytes for a in arrays) / n

    track_state_bytes_per_param.unit = "bytes"


# bfloat16 parameters: how the new value is written back (keyword options of
# the classes); "float32" is float32 parameters, the baseline.
WRITE_BACK = {"float32": {}, "nearest": {}, "stochastic": {"stochastic_rounding": True},
              "master": {"master_weights": True},
              "master+stochastic": {"master_weights": True, "stochastic_rounding": True}}


class BFloat16Params:
    """``opt.step([g])`` of Adam on bfloat16 parameters (with bfloat16
    gradients and float32 state), each way of writing them back, per size and
    CPU target; "float32" steps float32 parameters. Skips on a fastopt
    without bfloat16 parameters, and without ml_dtypes."""

    params = [list(WRITE_BACK), SIZES, ["serial", "parallel"]]
    param_names = ["write_back", "n", "target"]
    version = "1"
    repeat = REPEAT

    def setup(self, write_back, n, target):
        require_target(target)
        options = WRITE_BACK[write_back]
        require_arguments(fastopt.Adam, {"master_weights": None, "stochastic_rounding": None})
        _require("bfloat16")
        import ml_dtypes
        dtype = np.float32 if write_back == "float32" else ml_dtypes.bfloat16

        def build():
            rng = np.random.default_rng(0)
            p = rng.standard_normal(n).astype(dtype)
            g = (rng.standard_normal(n) * 1e-3).astype(dtype)
            opt = fastopt.Adam([p], lr=LR, target=target, **options)
            step = (lambda: opt.step([g]))
            warm(step)
            return step

        self.step = memo(("bf16_params", write_back, n, target), build)

    def time_step(self, write_back, n, target):
        self.step()
