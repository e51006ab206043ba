"""The optimizer step of a PyTorch training loop: fastopt.torch against torch's fused step.

``python -m fastopt.bench.torch_loop [--quick] [--device cpu|cuda]`` times,
interleaved (each round times every case once, in turn; medians over the
rounds), float32:

- ``many``: 2,000 tensors of 5,000 elements: ``fastopt.torch.Adam`` after
  ``flatten_`` against ``torch.optim.Adam(fused=True)``;
- ``one``: one tensor of 2e7 elements, without ``flatten_``, the same two;
- ``clip``: one tensor of 1e7 elements: fastopt's step with fused clipping
  (``max_grad_norm``) against its plain step, for the NumPy class and for
  fastopt.torch, and against ``torch.nn.utils.clip_grad_norm_`` followed by
  the fused step.

Each row prints the medians (ms) and the ratio; the last line is
``RESULT {json}``. Needs PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import numpy as np

from .cli import whole


def _median_times(cases: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], object]
                  ) -> dict[str, float]:
    """Median seconds of each case, timed in interleaved rounds after a warm-up call."""
    for fn in cases.values():
        fn()
    sync()
    times: dict[str, list] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def run(quick: bool = False, device: str = "cpu") -> dict:
    import torch

    import fastopt
    import fastopt.torch as ft

    rounds = 5 if quick else 15
    scale = 10 if quick else 1
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)

    def params(count: int, size: int) -> list:
        ps = [torch.nn.Parameter(torch.zeros(size, device=device)) for _ in range(count)]
        for p in ps:
            p.grad = torch.randn(size, device=device, generator=gen)
        return ps

    rows = {}
    # many tensors: flatten_ vs torch fused
    count, size = 2000 // scale, 5000
    mine, theirs = params(count, size), params(count, size)
    ft.flatten_(mine)
    fast, fused = ft.Adam(mine), torch.optim.Adam(theirs, fused=True)
    t = _median_times({"fastopt.torch+flatten_": fast.step, "torch fused": fused.step}, rounds, sync)
    rows["many"] = {"shape": [count, size], **t, "speedup": t["torch fused"] / t["fastopt.torch+flatten_"]}
    del mine, theirs, fast, fused

    # one large tensor, no flatten_
    n = 20_000_000 // scale
    mine, theirs = params(1, n), params(1, n)
    fast, fused = ft.Adam(mine), torch.optim.Adam(theirs, fused=True)
    t = _median_times({"fastopt.torch": fast.step, "torch fused": fused.step}, rounds, sync)
    rows["one"] = {"n": n, **t, "speedup": t["torch fused"] / t["fastopt.torch"]}
    del mine, theirs, fast, fused

    # clipping at 1e7
    n = 10_000_000 // scale
    mine, theirs = params(1, n), params(1, n)
    fast, fused = ft.Adam(mine), torch.optim.Adam(theirs, fused=True)

    def torch_clip_step() -> None:
        torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        fused.step()

    cases: dict[str, Callable[[], object]] = {
        "fastopt.torch clip": lambda: fast.step(max_grad_norm=1.0),
        "fastopt.torch plain": fast.step,
        "torch clip_grad_norm_+fused": torch_clip_step,
    }
    if device == "cpu":
        p = np.zeros(n, np.float32)
        g = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
        numpy_opt = fastopt.Adam([p])
        cases["numpy clip"] = lambda: numpy_opt.step([g], max_grad_norm=1.0)
        cases["numpy plain"] = lambda: numpy_opt.step([g])
    t = _median_times(cases, rounds, sync)
    rows["clip"] = {"n": n, **t,
                    "torch_clip_cost": t["fastopt.torch clip"] / t["fastopt.torch plain"],
                    "vs_torch_clip": t["torch clip_grad_norm_+fused"] / t["fastopt.torch clip"]}
    if device == "cpu":
        rows["clip"]["numpy_clip_cost"] = t["numpy clip"] / t["numpy plain"]
    return {"device": device, "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, 5 rounds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    import numba
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    parser.add_argument("--threads", type=whole(0, most), default=0,
                        help="CPU threads for torch and numba (default 0: theirs)")
    args = parser.parse_args(argv)
    if args.threads:
        import numba
        import torch
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    result = run(args.quick, args.device)
    for name, row in result["rows"].items():
        cells = ", ".join(f"{k} {v * 1e3:.2f} ms" if isinstance(v, float) and k[0] in "ftn"
                          and not k.startswith(("torch_clip_cost", "numpy_clip_cost"))
                          else f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items())
        print(f"{name:5s} {cells}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
