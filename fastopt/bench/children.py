"""The bench's child processes: torch's optimizers, bitsandbytes' 8-bit AdamW,
and a fresh process's start-up.

Both children are scripts beside this module, run by path through
``runpy`` (``script``), so that neither imports fastopt before it means to
and the script's folder does not shadow any module on ``sys.path``.
"""

import json
import os
import subprocess
import sys
from typing import ClassVar

import numpy as np

from .cases import VARIANTS

_HERE = os.path.dirname(os.path.abspath(__file__))
_RUN = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def script(name, *args):
    """The command line that runs the script ``name`` beside this module with ``args``."""
    return [sys.executable, "-c", _RUN, os.path.join(_HERE, name), *map(str, args)]


class TorchChild:
    """torch's fused CPU optimizers in a child process, stepped on request.

    torch and numba each run a thread pool; in one process they spin against
    each other. In a child, torch's steps can still take turns with ours (see
    ``interleaved``). ``version`` is None when torch is not installed.
    """

    library = "torch"

    def __init__(self, threads):
        self._proc = subprocess.Popen(script("_torch_server.py", threads, self.library),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = json.loads(self._proc.stdout.readline() or "null")
        if self.version is None:
            self.close()

    def __bool__(self):
        return self.version is not None

    def _ask(self, **cmd):
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the torch child process ended")
        return json.loads(line)

    def setup(self, variant, n, dtype, count=1):
        """Build torch's fused optimizer for ``variant`` over ``count`` tensors of ``n // count``."""
        cls, hp, _ = VARIANTS[variant]
        hp = {k: v for k, v in hp.items() if k != "state_dtype"}  # torch's state: float32
        self._ask(cmd="setup", cls=cls.__name__, hp=hp, dtype=np.dtype(dtype).name,
                  count=count, size=n // count)

    def time(self, calls):
        """Median seconds of ``calls`` timed steps."""
        return self._ask(cmd="time", calls=calls)

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()


class BitsandbytesChild(TorchChild):
    """bitsandbytes' 8-bit AdamW on the CPU (``bitsandbytes.optim.AdamW8bit``) in a
    child process, stepped on request, the contender of the ``adam-int8`` variant.

    Its weight decay is 0, so its rule is Adam's, as fastopt's ``adam-int8``;
    its state is 8-bit from 4,096 elements (bitsandbytes' ``min_8bit_size``),
    as fastopt's. It runs in torch's process, on torch's threads, with no
    fused kernel of its own on the CPU. ``version`` (bitsandbytes') is None
    when bitsandbytes cannot be imported; ``bool(child)`` says whether it runs.
    """

    library = "bitsandbytes"
    # variant -> (bitsandbytes.optim class, hyperparameters)
    VARIANTS: ClassVar[dict] = {"adam-int8": ("AdamW8bit", {"lr": 1e-3, "weight_decay": 0.0})}

    def setup(self, variant, n, dtype, count=1):
        """Build the 8-bit optimizer for ``variant`` (one of ``VARIANTS``) over
        ``count`` tensors of ``n // count`` elements."""
        cls, hp = self.VARIANTS[variant]
        self._ask(cmd="setup", cls=cls, hp=hp, dtype=np.dtype(dtype).name, count=count,
                  size=n // count)


def measure_startup():
    """(import ms, first Adam step ms) in a fresh process, kernels already cached."""
    root = os.path.dirname(os.path.dirname(_HERE))  # the folder holding this fastopt
    proc = subprocess.run(script("_startup_child.py", root), capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    imp, first = map(float, proc.stdout.split())
    return {"import_ms": imp, "first_step_ms": first}
