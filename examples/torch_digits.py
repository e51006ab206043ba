"""A PyTorch MLP on handwritten digits, trained by torch's fused AdamW and by fastopt.torch's.

What it shows
    One ordinary PyTorch training loop (an MLP 64 -> 256 -> 256 -> 10 on the
    8x8 handwritten digits that ship inside scikit-learn; nothing is
    downloaded), with a cosine learning-rate schedule and gradient clipping
    by global norm, run twice from the same initial weights: once with
    ``torch.optim.AdamW(fused=True)`` and ``torch.nn.utils.clip_grad_norm_``,
    once with ``fastopt.torch.AdamW`` on a model whose parameters
    ``fastopt.torch.flatten_`` put in one buffer, clipping fused into the step
    (``opt.step(max_grad_norm=...)``). It prints both test accuracies and the
    median time of the optimizer step (clipping included) of each.

How to run
    pip install -e ".[examples,torch]"
    python examples/torch_digits.py            # 30 epochs, a few seconds
    python examples/torch_digits.py --quick    # 8 epochs

The last line printed is ``RESULT {json}``; the script exits with status 1
if either test accuracy is below 95% or they differ by more than 2 points.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastopt.torch

TARGET_ACCURACY = 0.95
MAX_GAP = 0.02
MAX_GRAD_NORM = 1.0


def load_data(seed):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                        random_state=seed)
    return (torch.from_numpy(X_train), torch.from_numpy(X_test),
            torch.from_numpy(y_train), torch.from_numpy(y_test))


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def train(model, opt, fused_clip, data, epochs, batch, seed):
    """Train; return the test accuracy and the optimizer-step times (seconds)."""
    X_train, X_test, y_train, y_test = data
    steps_per_epoch = -(-len(X_train) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    step_times = []
    for _ in range(epochs):
        order = torch.randperm(len(X_train), generator=gen)
        for k in range(0, len(X_train), batch):
            idx = order[k:k + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X_train[idx]), y_train[idx])
            loss.backward()
            t0 = time.perf_counter()
            if fused_clip:
                opt.step(max_grad_norm=MAX_GRAD_NORM)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                opt.step()
            step_times.append(time.perf_counter() - t0)
            sched.step()
    with torch.no_grad():
        accuracy = (model(X_test).argmax(1) == y_test).float().mean().item()
    return accuracy, step_times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 epochs instead of 30")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = 8 if args.quick else 30
    data = load_data(args.seed)

    torch_model = make_model(args.seed)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=3e-3, fused=True)
    fast_model = make_model(args.seed)
    fastopt.torch.flatten_(fast_model)
    fast_opt = fastopt.torch.AdamW(fast_model.parameters(), lr=3e-3)

    results = {}
    for name, model, opt, fused_clip in (("torch_fused", torch_model, torch_opt, False),
                                         ("fastopt", fast_model, fast_opt, True)):
        accuracy, times = train(model, opt, fused_clip, data, epochs, 64, args.seed)
        results[name] = {"test_accuracy": round(accuracy, 4),
                         "step_median_us": round(float(np.median(times)) * 1e6, 1)}
        print(f"{name:12s} test accuracy {accuracy:.4f}   optimizer step (with clipping) "
              f"{results[name]['step_median_us']:.0f} us median")
    gap = abs(results["torch_fused"]["test_accuracy"] - results["fastopt"]["test_accuracy"])
    ok = gap <= MAX_GAP and all(r["test_accuracy"] >= TARGET_ACCURACY for r in results.values())
    result = {"example": "torch_digits", "ok": ok, "optimizers": results, "gap": round(gap, 4), "epochs": epochs,
              "parameters": sum(p.numel() for p in fast_model.parameters())}
    print("RESULT " + json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
