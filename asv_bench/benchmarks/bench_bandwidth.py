"""How close a step comes to the memory-bandwidth limit (docs/measuring.md).

``Roofline.time_step`` times the trivial same-traffic kernel alone: when it
moves in the history graphs, the machine changed, not fastopt.
``Bandwidth`` tracks, per step of the functional API, the GB/s moved and
the percentage of the same-shape roofline measured in the same process
right beside it. ``SerialPath`` does the same for the optimizer classes'
serial loop at the sizes of ``python -m fastopt bench``'s serial rows (1e4
and 5e4), and times that step: a loop that stops vectorising shows there.
The track values are higher-is-better (``compare.sh`` knows); they time
many steps themselves, as a track benchmark must.
"""

from .common import (DTYPES, REPEAT, SERIAL_SIZES, SIZES, TARGETS, VARIANT_NAMES, Case,
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


class _Tracks:
    """GB/s and % of roofline of ``self.step`` against ``self.roof``, moving ``self.bytes``."""

    def track_gbps(self, *params):
        return self.bytes / best_seconds(self.step) / 1e9

    track_gbps.unit = "GB/s"

    def track_roofline_pct(self, *params):
        # Interleaved, so that a change in the machine's load hits both alike.
        step = roof = float("inf")
        for _ in range(3):
            step = min(step, best_seconds(self.step, repeats=3))
            roof = min(roof, best_seconds(self.roof, repeats=3))
        return 100.0 * roof / step

    track_roofline_pct.unit = "% of roofline"

    def build(self, key, make_step, variant, dtype, n, target):
        """Set ``step``, ``roof`` and ``bytes`` up, once per process (``memo``)."""
        def build():
            step = make_step()
            roof = roofline_step(updated_arrays(variant), dtype, n, target)
            warm(step)
            warm(roof)
            return step, roof

        self.step, self.roof = memo(key, build)
        self.bytes = bytes_per_step(variant, n, dtype)


class Bandwidth(_Tracks):
    """GB/s and % of roofline of one functional-API step."""

    params = [VARIANT_NAMES, DTYPES, SIZES, TARGETS]
    param_names = ["variant", "dtype", "n", "target"]
    version = "1"
    timeout = 120

    def setup(self, variant, dtype, n, target):
        require_target(target)
        self.build(("bandwidth", variant, dtype, n, target),
                   lambda: Case(variant, dtype, n, target=target).functional_step(target),
                   variant, dtype, n, target)


class SerialPath(_Tracks):
    """``opt.step([g])`` with ``target="serial"`` at the bench's serial sizes: time, GB/s, %."""

    params = [VARIANT_NAMES, DTYPES, SERIAL_SIZES]
    param_names = ["variant", "dtype", "n"]
    version = "1"
    repeat = REPEAT
    timeout = 120

    def setup(self, variant, dtype, n):
        self.build(("serial", variant, dtype, n),
                   lambda: Case(variant, dtype, n).class_step("serial"),
                   variant, dtype, n, "serial")

    def time_step(self, variant, dtype, n):
        self.step()
