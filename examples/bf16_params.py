"""bfloat16 parameters: the digits MLP trained with float32 and with bfloat16 weights.

What it shows
    The two-layer perceptron of ``mlp_digits.py`` trained with AdamW, once
    with float32 weights and once with bfloat16 weights (``ml_dtypes``
    arrays) under each way fastopt can write them back: rounded to nearest,
    stochastic rounding (``stochastic_rounding=True``), a float32 master
    copy (``master_weights=True``), and both. The forward and backward passes
    compute in float32 on widened copies of the weights; the gradients are
    handed to the optimizer as bfloat16, as a bfloat16 model would produce
    them. Each setting sees the same batches. At two learning rates it
    prints the test accuracy and how far the weights end from the float32
    run's (``||w - w_float32|| / ||w_float32 - w0||``): at lr 1e-4 most
    updates are smaller than half a bfloat16 step of the weight they change,
    so rounding to nearest loses them, and stochastic rounding or the master
    copy keeps them. Then it times one AdamW step of each setting on a large
    vector, interleaved.

How to run
    pip install -e ".[examples,lowp]"
    python examples/bf16_params.py              # 3 seeds, 400 steps, timing at 2e7 elements
    python examples/bf16_params.py --quick      # 1 seed, 200 steps, timing at 1e5

The last line printed is ``RESULT {json}``; the script exits with status 1
if a setting with stochastic rounding or a master copy ends more than 2
points of test accuracy below float32 weights, or if at lr 1e-4 stochastic
rounding does not end closer to the float32 run than rounding to nearest.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlp_digits  # noqa: E402  (the model, its data and its passes)

import fastopt  # noqa: E402
from fastopt.bench.cli import whole  # noqa: E402

BF16 = ml_dtypes.bfloat16
NAMES = ("w1", "b1", "w2", "b2")
SETTINGS = {  # name -> (parameter dtype, AdamW options)
    "float32": (np.float32, {}),
    "bf16 nearest": (BF16, {}),
    "bf16 stochastic": (BF16, {"stochastic_rounding": True}),
    "bf16 master": (BF16, {"master_weights": True}),
    "bf16 master+stochastic": (BF16, {"master_weights": True, "stochastic_rounding": True}),
}


class Model:
    """What ``mlp_digits.forward``/``backward`` index: float32 weights by
    name (widened copies of bfloat16 ones) and float32 gradient buffers."""

    def __init__(self, weights):
        self.weights = weights
        self.grad = {k: np.empty(w.shape, np.float32) for k, w in weights.items()}
        self.widen()

    def widen(self):
        self.wide = {k: w.astype(np.float32) for k, w in self.weights.items()}

    def __getitem__(self, name):
        return self.wide[name]


def train(setting, data, seed, steps, lr):
    """Train one setting; return (test accuracy, final weights as float64, initial ones)."""
    dtype, options = SETTINGS[setting]
    X_train, X_test, y_train, y_test = data
    flat = mlp_digits.init_params(X_train.shape[1], mlp_digits.HIDDEN, 10,
                                  np.random.default_rng(seed))
    weights = {k: flat[k].astype(dtype) for k in NAMES}  # the same start, rounded for bfloat16
    model = Model(weights)
    start = np.concatenate([model.wide[k].ravel() for k in NAMES]).astype(np.float64)
    opt = fastopt.AdamW([weights[k] for k in NAMES], lr=lr, **options)
    batches = np.random.default_rng(seed + 1)
    for _ in range(steps):
        batch = batches.integers(0, len(y_train), 32)
        h, scores = mlp_digits.forward(model, X_train[batch])
        mlp_digits.backward(model, X_train[batch], y_train[batch], h, scores)
        opt.step([model.grad[k].astype(dtype) for k in NAMES])
        model.widen()
    end = np.concatenate([model.wide[k].ravel() for k in NAMES]).astype(np.float64)
    return mlp_digits.accuracy(model, X_test, y_test), end, start


def quality(seeds, steps, lrs):
    data = mlp_digits.load_data(0)
    rows = {}
    for lr in lrs:
        for seed in seeds:
            accuracy, ref, start = train("float32", data, seed, steps, lr)
            rows.setdefault((lr, "float32"), []).append((accuracy, 0.0))
            for setting in list(SETTINGS)[1:]:
                accuracy, end, _ = train(setting, data, seed, steps, lr)
                deviation = np.linalg.norm(end - ref) / np.linalg.norm(ref - start)
                rows.setdefault((lr, setting), []).append((accuracy, float(deviation)))
    return rows


def speed(n, rounds):
    """Median ms of one AdamW step on ``n`` elements per setting, interleaved."""
    rng = np.random.default_rng(0)
    g32 = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    runs = {}
    for setting, (dtype, options) in SETTINGS.items():
        p, g = np.zeros(n, dtype), g32.astype(dtype)
        opt = fastopt.AdamW([p], **options)
        opt.step([g])  # compile or load, and make the state
        runs[setting] = (opt, [g])
    times = {s: [] for s in runs}
    for _ in range(rounds):
        for setting, (opt, grads) in runs.items():
            t0 = time.perf_counter()
            opt.step(grads)
            times[setting].append(time.perf_counter() - t0)
    return {s: statistics.median(t) * 1e3 for s, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps, timing at 1e5")
    parser.add_argument("--steps", type=whole(1))
    parser.add_argument("--speed", type=whole(1), help="elements of the timed vector (default 2e7)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    steps = args.steps or (200 if args.quick else 400)
    n = int(args.speed or (1e5 if args.quick else 2e7))
    lrs = (1e-3, 1e-4)

    rows = quality(seeds, steps, lrs)
    print(f"digits MLP 64-{mlp_digits.HIDDEN}-10 (19,210 weights), AdamW, batch 32, {steps} steps, "
          f"seeds {seeds[0]}-{seeds[-1]}")
    print(f"{'lr':>6}  {'weights':<24}{'test accuracy':>15}{'deviation from float32':>25}")
    result: dict = {"steps": steps, "seeds": seeds, "quality": [], "speed": {}}
    for (lr, setting), values in rows.items():
        acc = [a for a, _ in values]
        dev = [d for _, d in values]
        print(f"{lr:>6g}  {setting:<24}{100 * np.mean(acc):>14.1f}%"
              f"{min(dev):>16.3f} - {max(dev):.3f}")
        result["quality"].append({"lr": lr, "setting": setting, "accuracy": acc, "deviation": dev})

    ms = speed(n, rounds=5 if args.quick else 11)
    print(f"\nOne AdamW step on {n:,} elements (default target), median ms:")
    for setting, t in ms.items():
        print(f"  {setting:<24}{t:>9.2f} ms  ({ms['float32'] / t:.2f}x float32)")
    result["speed"] = {"n": n, "ms": ms}

    def mean_acc(lr, setting):
        return float(np.mean([a for a, _ in rows[(lr, setting)]]))

    def mean_dev(lr, setting):
        return float(np.mean([d for _, d in rows[(lr, setting)]]))

    kept = all(mean_acc(lr, s) >= mean_acc(lr, "float32") - 0.02 for lr in lrs
               for s in SETTINGS if "stochastic" in s or "master" in s)
    helps = mean_dev(1e-4, "bf16 stochastic") < mean_dev(1e-4, "bf16 nearest")
    result["checks"] = {"accuracy_kept": kept, "stochastic_beats_nearest_at_1e-4": helps}
    print("RESULT " + json.dumps({"example": "bf16_params", "ok": kept and helps, **result}))
    return 0 if kept and helps else 1


if __name__ == "__main__":
    sys.exit(main())
