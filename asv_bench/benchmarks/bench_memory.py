"""Memory a step takes: a fused step must allocate nothing.

``peakmem_step`` is asv's peak resident memory of the process; setup resets
the peak (Linux) after building and warming the case, so the figure is the
arrays plus whatever the step adds. ``track_step_alloc_bytes`` is exact and
portable: the peak bytes that tracemalloc (which sees NumPy's array
allocations) records during one step beyond what was live before it,
rounded down to whole 4 KiB pages, so that the few hundred bytes of Python
objects a call makes read 0 and anything array-sized shows. For fastopt it
is 0; for the NumPy baseline it is its temporaries.
"""

import tracemalloc

from .common import DTYPES, LARGE_SIZES, SIZES, VARIANT_NAMES, Case, memo, reset_peak_rss, warm

APIS = ["functional", "class", "numpy"]
PAGE = 4096


class StepMemory:
    # the largest size of the grid, leaving out FASTOPT_ASV_LARGE's
    params = [APIS, VARIANT_NAMES, DTYPES[:1],
              [max([n for n in SIZES if n not in LARGE_SIZES] or SIZES)]]
    param_names = ["api", "variant", "dtype", "n"]
    version = "1"

    def setup(self, api, variant, dtype, n):
        def build():
            case = Case(variant, dtype, n)
            if api == "functional":
                fn = case.functional_step(None)
            elif api == "class":
                fn = case.class_step(None)
            else:
                fn = case.numpy_step()
            warm(fn)
            return fn

        self.step = memo(("memory", api, variant, dtype, n), build)
        reset_peak_rss()

    def peakmem_step(self, api, variant, dtype, n):
        self.step()

    def track_step_alloc_bytes(self, api, variant, dtype, n):
        tracemalloc.start()
        try:
            self.step()  # allocations that happen once per process are not the step's
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            self.step()
            grown = tracemalloc.get_traced_memory()[1] - before
            return grown - grown % PAGE
        finally:
            tracemalloc.stop()

    track_step_alloc_bytes.unit = "bytes"
