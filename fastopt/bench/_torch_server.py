"""The child process of ``TorchChild`` and ``BitsandbytesChild``: torch's fused
CPU optimizers, or bitsandbytes' 8-bit ones, stepped on request.

Run as a script (``python _torch_server.py THREADS [LIBRARY]``), never
imported by fastopt: it imports torch, whose thread pool must not share a
process with numba's. LIBRARY is "torch" (the default) or "bitsandbytes".
It prints the library's version (JSON ``null`` when it cannot be imported),
then answers one JSON line per command line on stdin:

``{"cmd": "setup", "cls", "hp", "dtype", "count", "size"}``
    builds ``cls(params, fused=True, **hp)`` (torch) or ``cls(params, **hp)``
    (bitsandbytes: ``bitsandbytes.optim``'s class, which has no fused flag)
    over ``count`` tensors of ``size`` elements with gradients, steps it
    twice; answers ``0``.
``{"cmd": "time", "calls"}``
    answers the median seconds of ``calls`` timed steps.
"""

import contextlib
import json
import statistics
import sys
import time


def _classes(library):
    """``(version, {name: optimizer class}, extra keyword arguments)`` of ``library``."""
    import torch
    if library == "torch":
        return torch.__version__, {"SGD": torch.optim.SGD, "Adagrad": torch.optim.Adagrad,
                                   "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}, \
            {"fused": True}
    import bitsandbytes as bnb
    return bnb.__version__, {"AdamW8bit": bnb.optim.AdamW8bit, "Adam8bit": bnb.optim.Adam8bit}, {}


def main(threads, library="torch"):
    # Whatever an import prints goes to stderr: stdout carries the answers.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            version, classes, extra = _classes(library)
    except ImportError:
        print("null", flush=True)
        return
    except Exception as e:  # noqa: BLE001 -- installed but failing (bitsandbytes: no native library)
        print(f"{library} fails to import: {type(e).__name__}: {e}", file=sys.stderr)
        print("null", flush=True)
        return
    import torch
    torch.set_num_threads(threads)
    print(json.dumps(version), flush=True)
    opt = params = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            opt = params = None  # free the last job's tensors first
            dtype = getattr(torch, cmd["dtype"])
            g = torch.Generator().manual_seed(0)
            params = [torch.randn(cmd["size"], generator=g, dtype=dtype).requires_grad_()
                      for _ in range(cmd["count"])]
            for p in params:
                p.grad = torch.randn(cmd["size"], generator=g, dtype=dtype) * 1e-3
            opt = classes[cmd["cls"]](params, **extra, **cmd["hp"])
            opt.step()
            opt.step()
            print("0", flush=True)
        else:
            times = []
            for _ in range(cmd["calls"]):
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            print(json.dumps(statistics.median(times)), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
