"""How close a step comes to the memory-bandwidth limit (shared/PERF.md).

``Roofline.time_step`` times the trivial same-traffic kernel alone: when it
moves in the history graphs, the machine changed, not fastopt.
``Bandwidth`` tracks, per step of the functional API, the GB/s moved and
the percentage of the same-shape roofline measured in the same process
right beside it. Both track values are higher-is-better (``compare.sh``
knows); both time many steps themselves, as a track benchmark must.
"""

from .common import (DTYPES, REPEAT, SIZES, TARGETS, VARIANT_NAMES, Case,
                     best_seconds, bytes_per_step, memo, require_target, roofline_step,
                     updated_arrays, warm)


class Roofline:
    """The roofline kernel that reads g and updates ``arrays`` arrays in place."""

    params = [[1, 2, 3, 4], DTYPES, SIZES, TARGETS]
    param_names = ["arrays", "dtype", "n", "target"]
    version = "1"
    repeat = REPEAT

    def setup(self, arrays, dtype, n, target):
        def build():
            fn = roofline_step(arrays, dtype, n, target)
            warm(fn)
            return fn

        self.step = memo(("roofline", arrays, dtype, n, target), build)

    def time_step(self, arrays, dtype, n, target):
        self.step()


class Bandwidth:
    """GB/s and % of roofline of one functional-API step."""

    params = [VARIANT_NAMES, DTYPES, SIZES, TARGETS]
    param_names = ["variant", "dtype", "n", "target"]
    version = "1"
    timeout = 120

    def setup(self, variant, dtype, n, target):
        require_target(target)

        def build():
            step = Case(variant, dtype, n, target=target).functional_step(target)
            roof = roofline_step(updated_arrays(variant), dtype, n, target)
            warm(step)
            warm(roof)
            return step, roof

        self.step, self.roof = memo(("bandwidth", variant, dtype, n, target), build)
        self.bytes = bytes_per_step(variant, n, dtype)

    def track_gbps(self, variant, dtype, n, target):
        return self.bytes / best_seconds(self.step) / 1e9

    track_gbps.unit = "GB/s"

    def track_roofline_pct(self, variant, dtype, n, target):
        # Interleaved, so that a change in the machine's load hits both alike.
        step = roof = float("inf")
        for _ in range(3):
            step = min(step, best_seconds(self.step, repeats=3))
            roof = min(roof, best_seconds(self.roof, repeats=3))
        return 100.0 * roof / step

    track_roofline_pct.unit = "% of roofline"
