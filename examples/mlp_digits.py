"""A NumPy neural network on handwritten digits, its parameters in one FlatParams.

What it shows
    A two-layer perceptron (64 -> 256 -> 10, ReLU, softmax cross-entropy)
    written in plain NumPy, forward and backward by hand, trained on the 8x8
    handwritten-digit images that ship inside scikit-learn (1,797 images;
    nothing is downloaded). All four parameter arrays live in one
    ``fastopt.FlatParams``: ``flat["w1"]`` is a view into one buffer, the
    backward pass writes each gradient straight into ``flat.grad["w1"]``
    (``np.matmul(..., out=...)``), and ``opt.step()`` updates every
    parameter in one fused kernel call per batch. It prints the test
    accuracy and the time per training step, split into the NumPy forward
    and backward passes and the optimizer step.

How to run
    pip install -e ".[examples]"
    python examples/mlp_digits.py            # 30 epochs, a few seconds
    python examples/mlp_digits.py --quick    # 10 epochs

The last line printed is ``RESULT {json}``; the script exits with status 1
if the test accuracy is below 95%.
"""

import argparse
import json
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastopt
from fastopt.bench.cli import whole

TARGET_ACCURACY = 0.95
HIDDEN = 256


def load_data(seed):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)


def init_params(n_in, n_hidden, n_out, rng):
    """He-initialised weights, zero biases, in one float32 buffer."""
    flat = fastopt.FlatParams({"w1": (n_in, n_hidden), "b1": n_hidden,
                               "w2": (n_hidden, n_out), "b2": n_out}, dtype=np.float32)
    flat["w1"][...] = rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)
    flat["w2"][...] = rng.standard_normal((n_hidden, n_out)) * np.sqrt(2.0 / n_hidden)
    return flat


def forward(flat, X):
    """Hidden activations and class scores."""
    h = np.maximum(X @ flat["w1"] + flat["b1"], 0)
    return h, h @ flat["w2"] + flat["b2"]


def backward(flat, X, y, h, scores):
    """Mean cross-entropy loss; its gradients are written into ``flat.grad``."""
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = -np.mean(np.log(probs[rows, y]))
    d_scores = probs
    d_scores[rows, y] -= 1
    d_scores /= len(y)                                   # d loss / d scores
    grad = flat.grad
    np.matmul(h.T, d_scores, out=grad["w2"])             # written in place: no copies
    d_scores.sum(axis=0, out=grad["b2"])
    d_hidden = d_scores @ flat["w2"].T
    d_hidden[h <= 0] = 0                                 # ReLU
    np.matmul(X.T, d_hidden, out=grad["w1"])
    d_hidden.sum(axis=0, out=grad["b1"])
    return loss


def accuracy(flat, X, y):
    return float(np.mean(forward(flat, X)[1].argmax(axis=1) == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 epochs instead of 30")
    parser.add_argument("--epochs", type=whole(1), help="number of passes over the training set")
    parser.add_argument("--batch-size", type=whole(1), default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=whole(1), default=HIDDEN,
                        help=f"hidden units (default {HIDDEN}: 19,210 parameters; 1024: 76,810, "
                             "above the parallel threshold)")
    parser.add_argument("--target", choices=["auto", "serial", "parallel"], default="auto",
                        help="fastopt kernel: auto (by size: parallel from "
                             "fastopt.config.PARALLEL_THRESHOLD elements), serial or parallel")
    args = parser.parse_args(argv)
    epochs = args.epochs or (10 if args.quick else 30)

    X_train, X_test, y_train, y_test = load_data(args.seed)
    rng = np.random.default_rng(args.seed)
    flat = init_params(X_train.shape[1], args.hidden, 10, rng)
    kernel = args.target if args.target != "auto" else (
        "timed" if flat.data.size >= fastopt.config.PARALLEL_THRESHOLD else "serial")
    print(f"digits: {len(y_train)} train, {len(y_test)} test; MLP 64-{args.hidden}-10, "
          f"{flat.data.size:,} float32 parameters in one FlatParams; {kernel} kernel")

    # One optimizer over the whole buffer: one fused kernel call per step.
    # (To keep weight decay off the biases, list them next to each other in
    # the FlatParams and make two groups from flat.segment("w1", "w2") and
    # flat.segment("b1", "b2"): one call per group.)
    # Below fastopt.config.PARALLEL_THRESHOLD elements the default is the
    # serial kernel; from it, whichever of serial and parallel fastopt timed
    # faster lately (the matrix products' threads can hold the cores a
    # parallel step needs). --target forces one.
    target = None if args.target == "auto" else args.target
    opt = fastopt.Adam(flat, lr=args.lr, target=target)

    t_model, t_step = [], []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(y_train))
        losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            t0 = time.perf_counter()
            h, scores = forward(flat, X_train[batch])
            losses.append(backward(flat, X_train[batch], y_train[batch], h, scores))
            t1 = time.perf_counter()
            opt.step()                                   # every parameter, one kernel call
            t2 = time.perf_counter()
            t_model.append(t1 - t0)
            t_step.append(t2 - t1)
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  train loss {np.mean(losses):.4f}  "
                  f"test accuracy {accuracy(flat, X_test, y_test):.1%}")

    acc = accuracy(flat, X_test, y_test)
    # Medians: what a step costs; means: what the run paid, stalls included
    # (on a busy machine a step now and then waits for a core).
    steps = len(t_step)
    model_us, step_us = 1e6 * np.median(t_model), 1e6 * np.median(t_step)
    print(f"{steps} steps; time per step, median (mean): NumPy forward+backward "
          f"{model_us:.0f} us ({1e6 * np.mean(t_model):.0f}), fastopt Adam step "
          f"{step_us:.1f} us ({1e6 * np.mean(t_step):.1f})")
    # The same step alone, 200 in a row with nothing between (after the
    # accuracy is taken: these steps move the weights): the loop's median
    # over this one is what running between matrix products costs a step.
    t_alone = []
    for _ in range(200):
        t0 = time.perf_counter()
        opt.step()
        t_alone.append(time.perf_counter() - t0)
    alone_us = 1e6 * np.median(t_alone)
    print(f"the same step alone, 200 in a row: median {alone_us:.1f} us (in the loop: "
          f"{step_us / alone_us:.2f}x that)")
    ok = acc >= TARGET_ACCURACY
    print(f"test accuracy {acc:.1%} (target {TARGET_ACCURACY:.0%}): {'reached' if ok else 'MISSED'}")
    print("RESULT " + json.dumps({
        "example": "mlp_digits", "ok": ok, "test_accuracy": round(acc, 4),
        "target_accuracy": TARGET_ACCURACY, "epochs": epochs, "steps": steps, "kernel": kernel,
        "forward_backward_median_us": round(model_us, 1),
        "optimizer_step_median_us": round(step_us, 2),
        "optimizer_step_mean_us": round(1e6 * np.mean(t_step), 2),
        "optimizer_step_alone_median_us": round(alone_us, 2)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
