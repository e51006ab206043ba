"""``python -m fastopt bench``: what fastopt does on this machine.

For each optimizer and size it times one step of fastopt (the optimizer
class on one array), the same-shape roofline kernel (the memory-bandwidth
limit, see ``fastopt.kernels.roofline``), a plain NumPy implementation and,
when torch is installed, torch's fused CPU optimizer (in a child process, so
the two thread pools do not compete); the ``adam-int8`` rows also time
bitsandbytes' 8-bit AdamW on the CPU when it is installed (in a child
process too; said to be skipped when it is not). It prints milliseconds per
step (median of several), GB/s moved, % of the roofline and the speed-ups, for
sizes on the serial path (1e4, 5e4) and the parallel one. Then the
many-small-tensors case (2,000 tensors of 5,000 floats: FlatParams against
torch over the 2,000 tensors), the cost of ``check_finite`` and the
start-up cost of a fresh process. docs/measuring.md says how and why.

Every figure goes through plausibility checks (``noise``): a busy machine
can produce impossible ones (above 100% of the roofline, a ratio no two
one-pass kernels can reach, rows of different work with the same time),
and those are marked and explained in the output and the JSON.

With ``--cuda`` (or ``--device cuda``) it also times the CUDA target on the
current GPU: fastopt's optimizer on device arrays, the CUDA roofline kernel of
the same traffic, and ``torch.optim``'s fused CUDA implementation when torch
with CUDA is installed. Without a GPU those rows are skipped with a message.

Modules: ``cases`` (the variants, their bytes, one step of each
contender), ``timing`` (interleaved rounds), ``measure`` and ``gpu`` (the
CPU and CUDA rows), ``children`` (torch's and bitsandbytes' process and
the start-up process; their scripts are ``_torch_server.py`` and
``_startup_child.py``),
``noise`` (the checks), ``reporting`` and ``plotting`` (output), ``cli``.

``make_step`` gives the bench's steps (fastopt, the roofline or torch, on
either device) as zero-argument functions to code that runs with this
fastopt, such as tests and ``examples/large_vector.py`` (which uses
``roofline_time``). The asv suite does not use it: it benchmarks old
commits too, so ``asv_bench/benchmarks/common.py`` builds its own cases
(``Case``) from fastopt's public API.
"""

from .cases import TORCH_FUSED, VARIANTS, bytes_per_step, make_step, numpy_step
from .children import BitsandbytesChild, TorchChild, measure_startup
from .cli import CUDA_SIZES, FULL_SIZES, MANY, QUICK_MANY, QUICK_SIZES, main, run
from .gpu import cuda_device, measure_cuda
from .measure import measure, measure_guards, measure_many, measure_threshold, roofline_time
from .plotting import plot
from .reporting import format_table, report
from .timing import batch_time, interleaved, median_time, ratio

__all__ = ["CUDA_SIZES", "FULL_SIZES", "MANY", "QUICK_MANY", "QUICK_SIZES", "TORCH_FUSED",
           "VARIANTS", "BitsandbytesChild", "TorchChild", "batch_time", "bytes_per_step", "cuda_device",
           "format_table", "interleaved", "main", "make_step", "measure", "measure_cuda",
           "measure_guards", "measure_many", "measure_startup", "measure_threshold",
           "median_time", "numpy_step", "plot", "ratio", "report", "roofline_time", "run"]
