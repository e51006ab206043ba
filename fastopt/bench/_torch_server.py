"""The child process of ``TorchChild``: torch's fused CPU optimizers, stepped on request.

Run as a script (``python _torch_server.py THREADS``), never imported by
fastopt: it imports torch, whose thread pool must not share a process with
numba's. It prints torch's version (JSON ``null`` without torch), then
answers one JSON line per command line on stdin:

``{"cmd": "setup", "cls", "hp", "dtype", "count", "size"}``
    builds ``cls(params, fused=True, **hp)`` over ``count`` tensors of
    ``size`` elements with gradients, steps it twice; answers ``0``.
``{"cmd": "time", "calls"}``
    answers the median seconds of ``calls`` timed steps.
"""

import json
import statistics
import sys
import time


def main(threads):
    try:
        import torch
    except ImportError:
        print("null", flush=True)
        return
    torch.set_num_threads(threads)
    print(json.dumps(torch.__version__), flush=True)
    classes = {"SGD": torch.optim.SGD, "Adagrad": torch.optim.Adagrad,
               "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
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
            opt = classes[cmd["cls"]](params, fused=True, **cmd["hp"])
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
    main(int(sys.argv[1]))
