"""Time per optimizer step: functional API, optimizer classes, and the NumPy baseline.

Each class times one step of one parameter array. Its ``setup`` builds the
arrays, and runs two steps first so that neither compilation (or loading
numba's disk cache) nor first-touch page faults are timed.

``version``: bump it when what a benchmark measures changes; leave it when
only comments or layout change, so the history stays one line.
"""

import fastopt.functional as F

from .common import (DTYPES, LR, REPEAT, SIZES, STEP, TARGETS, VARIANT_NAMES, Case, memo,
                     require_arguments, require_target, warm)


class _OneArrayStep:
    """One step on one parameter array, per target; ``make`` names the Case method."""

    params = [VARIANT_NAMES, DTYPES, SIZES, TARGETS]
    param_names = ["variant", "dtype", "n", "target"]
    version = "1"
    repeat = REPEAT
    make = None

    def setup(self, variant, dtype, n, target):
        require_target(target)

        def build():
            fn = getattr(Case(variant, dtype, n, target=target), self.make)(target)
            warm(fn)
            return fn

        self.step = memo((self.make, variant, dtype, n, target), build)

    def time_step(self, variant, dtype, n, target):
        self.step()


class Functional(_OneArrayStep):
    """``fastopt.functional.<optimizer>(p, g, *state, ...)`` on one array, per target."""

    make = "functional_step"


class Optimizers(_OneArrayStep):
    """``opt.step([g])`` of the optimizer class on one array, per target.

    Against ``Functional`` this shows the class layer's per-step cost
    (hyperparameter checks, state lookup), which matters at small sizes.
    """

    make = "class_step"


class NumpyReference:
    """The same step as plain NumPy whole-array code (with temporaries): the baseline."""

    params = [VARIANT_NAMES, DTYPES, SIZES]
    param_names = ["variant", "dtype", "n"]
    version = "1"
    repeat = REPEAT

    def setup(self, variant, dtype, n):
        def build():
            fn = Case(variant, dtype, n).numpy_step()
            warm(fn)
            return fn

        self.step = memo(("numpy", variant, dtype, n), build)

    def time_step(self, variant, dtype, n):
        self.step()


class Guards:
    """Adam's step with the guards: ``grad_scale`` (fused) and ``check_finite`` (one more scan).

    Skips on a fastopt whose functional API has no such arguments.
    """

    params = [["none", "grad_scale", "check_finite", "both"], DTYPES[:1], SIZES, TARGETS]
    param_names = ["guard", "dtype", "n", "target"]
    version = "1"
    repeat = REPEAT

    def setup(self, guard, dtype, n, target):
        require_target(target)
        kwargs = {"none": {}, "grad_scale": {"grad_scale": 1024.0},
                  "check_finite": {"check_finite": True},
                  "both": {"grad_scale": 1024.0, "check_finite": True}}[guard]
        require_arguments(F.adam, kwargs)

        def build():
            case = Case("adam", dtype, n, target=target)
            p, g, (m, v) = case.p, case.g, case.state
            fn = case.waiting(lambda: F.adam(p, g, m, v, step=STEP, lr=LR, target=target,
                                              **kwargs))
            warm(fn)
            return fn

        self.step = memo(("guards", guard, dtype, n, target), build)

    def time_step(self, guard, dtype, n, target):
        self.step()
