"""The digits MLP trained with each optimizer-state dtype: accuracy, memory and path.

What it shows
    ``state_dtype=`` on a real training run. The two-layer perceptron of
    ``mlp_digits.py`` (64 -> 256 -> 10, its 19,210 parameters in one
    FlatParams, forward and backward in NumPy) is trained with
    ``fastopt.AdamW`` once per state dtype: "float32" (the default),
    "bfloat16", "int8" and "int4", from the same initial weights on the same
    mini-batches, for each of three seeds. The whole buffer is one parameter
    of 19,210 elements, above the 4,096 from which int8 and int4 apply. For
    each state dtype it prints the test accuracy (mean and range over the
    seeds), the bytes of optimizer state held per parameter (the sum of the
    ``nbytes`` of the optimizer's state arrays, block scales included, over
    the parameter count) and how far the training path strayed from float32
    state's: ``|p - p_float32| / |p_float32 - p0|`` after the last step (0:
    the same weights; 1: as far from float32's weights as those moved).

    ``--compare`` adds other 8-bit and 4-bit optimizers, where installed, on
    ``torch.from_numpy`` views of the same buffers (and gradients), so they
    see the same gradients: bitsandbytes' ``AdamW8bit`` and torchao's
    ``AdamW8bit`` and ``AdamW4bit``, with torch's own ``AdamW`` as a check
    of the harness (its path should match float32 state's). Each library
    quantizes only tensors it accepts: torchao only those whose size is a
    multiple of its block, so the 19,210-element buffer keeps float32 state
    there. So ``--compare`` also trains everything on four tensors (w1, b1,
    w2, b2: views into the same buffer), where each library quantizes w1
    (16,384 elements) alone.

How to run
    pip install -e ".[examples,lowp]"      # lowp: ml_dtypes, for "bfloat16"
    python examples/state_dtype_digits.py                  # 3 seeds x 400 steps, about a minute
    python examples/state_dtype_digits.py --plot state.png # also draw accuracy, bytes, path
    python examples/state_dtype_digits.py --compare        # bitsandbytes, torchao (minutes:
                                                           # torchao compiles its steps)
    python examples/state_dtype_digits.py --quick          # 1 seed, 200 steps

The last line printed is ``RESULT {json}``; the script exits with status 1
if any of fastopt's reduced-precision state dtypes ends more than
``--tolerance`` (default 2 points) below float32 state's mean test accuracy,
or holds more state than ``state_dtype``'s table in the README says.
"""

import argparse
import json
import sys

import numpy as np
from mlp_digits import HIDDEN, accuracy, backward, forward, init_params, load_data

import fastopt
from fastopt.bench.cli import whole

STATE_DTYPES = ["float32", "bfloat16", "int8", "int4"]
# The most bytes of Adam state per parameter each may hold (README, "Reduced-precision state").
MAX_STATE_BYTES = {"float32": 8.0, "bfloat16": 4.0, "int8": 2.04, "int4": 1.07}
LAYER_NAMES = ("w1", "b1", "w2", "b2")
ONE, FOUR = "one tensor", "four tensors"  # the optimizer's view of the weights


def batches(n_train, steps, batch_size, rng):
    """The index arrays of ``steps`` mini-batches: epochs of shuffled training rows."""
    out = []
    while len(out) < steps:
        order = rng.permutation(n_train)
        out += [order[i:i + batch_size] for i in range(0, n_train, batch_size)]
    return out[:steps]


def fastopt_optimizer(state_dtype, four, lr):
    """A maker of ``fastopt.AdamW`` with ``state_dtype``, over the whole buffer or four tensors."""
    def make(flat):
        sd = None if state_dtype == "float32" else state_dtype
        if not four:
            opt = fastopt.AdamW(flat, lr=lr, state_dtype=sd)
            return opt.step, lambda: _numpy_state_bytes(opt)
        opt = fastopt.AdamW([flat[k] for k in LAYER_NAMES], lr=lr, state_dtype=sd)
        grads = [flat.grad[k] for k in LAYER_NAMES]
        return (lambda: opt.step(grads)), lambda: _numpy_state_bytes(opt)
    return make


def _numpy_state_bytes(opt):
    return sum(v.nbytes for state in opt.state.values() for v in state.values()
               if isinstance(v, np.ndarray))


def torch_optimizer(make_torch_opt, four):
    """A maker of a torch optimizer (``make_torch_opt(tensors)``) over
    ``torch.from_numpy`` views of the buffer and its gradient: it updates
    the same memory the NumPy model reads."""
    def make(flat):
        import torch
        if four:
            pairs = [(flat[k], flat.grad[k]) for k in LAYER_NAMES]
        else:
            pairs = [(flat.data, flat.grad_data)]
        tensors = []
        for p, g in pairs:
            t = torch.from_numpy(p).requires_grad_()
            t.grad = torch.from_numpy(g)
            tensors.append(t)
        opt = make_torch_opt(tensors)
        return opt.step, lambda: _torch_state_bytes(opt)
    return make


def _torch_state_bytes(opt):
    """Bytes of the tensors in ``opt.state`` ("step" counters aside), each storage once:
    a quantized state tensor (torchao) counts its codes, scales and map."""
    import torch
    seen = {}
    for state in opt.state.values():
        for key, v in state.items():
            if key == "step" or not isinstance(v, torch.Tensor):
                continue
            parts = [getattr(v, a) for a in v.tensor_attrs] if hasattr(v, "tensor_attrs") else [v]
            for t in parts:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def contenders(lr, compare):
    """``{(label, layout): maker}``: what to train; and what could not be (label -> why)."""
    out, missing = {}, {}
    for sd in STATE_DTYPES:
        if sd == "bfloat16":
            try:
                import ml_dtypes  # noqa: F401
            except ImportError:
                missing["fastopt bfloat16"] = 'needs ml_dtypes: pip install "fastopt[lowp]"'
                continue
        out[f"fastopt {sd}", ONE] = fastopt_optimizer(sd, False, lr)
    if not compare:
        return out, missing
    try:
        import torch
        torch.set_num_threads(1)  # NumPy's and numba's threads run here too
    except ImportError:
        missing["torch, bitsandbytes, torchao"] = "need PyTorch"
        return out, missing
    others = {"torch AdamW": lambda ts: torch.optim.AdamW(ts, lr=lr)}
    try:
        import bitsandbytes as bnb
        others["bitsandbytes AdamW8bit"] = lambda ts: bnb.optim.AdamW8bit(ts, lr=lr)
    except Exception as e:  # noqa: BLE001 -- a failing native library is as good as absent here
        missing["bitsandbytes AdamW8bit"] = f"cannot import bitsandbytes ({type(e).__name__})"
    try:
        from torchao.optim import AdamW4bit, AdamW8bit
        others["torchao AdamW8bit"] = lambda ts: AdamW8bit(ts, lr=lr)
        others["torchao AdamW4bit"] = lambda ts: AdamW4bit(ts, lr=lr)
    except Exception as e:  # noqa: BLE001
        missing["torchao AdamW8bit, AdamW4bit"] = f"cannot import torchao ({type(e).__name__})"
    for label, make in others.items():
        out[label, ONE] = torch_optimizer(make, False)
    for sd in ("int8", "int4"):
        out[f"fastopt {sd}", FOUR] = fastopt_optimizer(sd, True, lr)
    for label, make in others.items():
        if label != "torch AdamW":
            out[label, FOUR] = torch_optimizer(make, True)
    return out, missing


def train(maker, flat0, data, order):
    """Train a copy of ``flat0`` on the batches ``order``; return (final weights,
    test accuracy, bytes of optimizer state)."""
    X_train, X_test, y_train, y_test = data
    flat = fastopt.FlatParams({k: flat0[k].shape for k in flat0}, dtype=np.float32)
    flat.data[:] = flat0.data
    step, state_bytes = maker(flat)
    for batch in order:
        h, scores = forward(flat, X_train[batch])
        backward(flat, X_train[batch], y_train[batch], h, scores)
        step()
    return flat.data.copy(), accuracy(flat, X_test, y_test), state_bytes()


def spread(values, fmt):
    values = np.asarray(values, float)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} ({fmt.format(values.min())}-{fmt.format(values.max())})"


def plot(rows, path):
    """Test accuracy, state bytes per parameter and distance from float32's path, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [name + (f" ({layout})" if layout == FOUR else "") for name, layout in rows]
    y = np.arange(len(rows))[::-1]
    colours = [{"fastopt": "C0", "bitsandbytes": "C1", "torchao": "C2"}.get(name.split()[0], "C7")
               for name, _ in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(rows) + 1.6), sharey=True)
    panels = [("test_accuracy", "test accuracy, %", 100, "{:.1f}"),
              ("state_bytes_per_param", "optimizer state, bytes per parameter", 1, "{:.2f}"),
              ("deviation", "|p - p_float32| / |p_float32 - p0|", 1, "{:.3f}")]
    for ax, (key, title, scale, fmt) in zip(axes, panels):
        vals = [np.atleast_1d(r[key]) * scale for r in rows.values()]
        mean = np.array([v.mean() for v in vals])
        err = np.array([[m - v.min(), v.max() - m] for m, v in zip(mean, vals)]).T
        whiskers = key != "state_bytes_per_param" and max(len(v) for v in vals) > 1
        ax.barh(y, mean, xerr=err if whiskers else None, color=colours, capsize=3, height=0.6)
        for yi, m, v in zip(y, mean, vals):  # the mean, right of the highest seed's value
            ax.annotate(fmt.format(m), (v.max(), yi), xytext=(6, -3), textcoords="offset points",
                        fontsize=8)
        top = max(v.max() for v in vals)
        if key == "test_accuracy":
            lo = min(v.min() for v in vals)
            ax.set_xlim(max(0, lo - 3), min(100, top + 1.5))
        else:
            ax.set_xlim(0, top * 1.3 or 1)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=9)
    n_seeds = len(np.atleast_1d(next(iter(rows.values()))["test_accuracy"]))
    fig.suptitle("Digits MLP (19,210 parameters), AdamW: " + (
        f"bars the mean over {n_seeds} seeds, whiskers the lowest and highest seed"
        if n_seeds > 1 else "one seed"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps")
    parser.add_argument("--steps", type=whole(1), help="optimizer steps per run (default 400)")
    parser.add_argument("--seeds", type=whole(1), help="seeds 0..N-1 (default 3)")
    parser.add_argument("--batch-size", type=whole(1), default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest drop of mean test accuracy from float32 state's")
    parser.add_argument("--compare", action="store_true",
                        help="also bitsandbytes' and torchao's 8-bit and 4-bit AdamW (and torch's "
                             "AdamW), where installed, on one tensor and on four")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the table (needs matplotlib)")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.quick else 400)
    seeds = range(args.seeds or (1 if args.quick else 3))

    todo, missing = contenders(args.lr, args.compare)
    for label, why in missing.items():
        print(f"skipped {label}: {why}")
    results = {key: {"test_accuracy": [], "deviation": [], "state_bytes_per_param": None}
               for key in todo}
    for seed in seeds:
        data = load_data(seed)
        rng = np.random.default_rng(seed)
        flat0 = init_params(data[0].shape[1], HIDDEN, 10, rng)
        order = batches(len(data[2]), steps, args.batch_size, rng)
        finals = {}
        for key, maker in todo.items():
            p, acc, nbytes = train(maker, flat0, data, order)
            finals[key] = p
            r = results[key]
            r["test_accuracy"].append(acc)
            r["state_bytes_per_param"] = nbytes / flat0.data.size
        ref = finals["fastopt float32", ONE]
        moved = np.linalg.norm(ref - flat0.data)
        for key, p in finals.items():
            results[key]["deviation"].append(float(np.linalg.norm(p - ref) / moved))

    print(f"digits MLP 64-{HIDDEN}-10 ({flat0.data.size:,} parameters), AdamW lr {args.lr:g}, "
          f"batch {args.batch_size}, {steps} steps, seeds {seeds.start}-{seeds.stop - 1}; "
          "mean (lowest-highest) over the seeds")
    head = ["optimizer", "state of", "test accuracy %", "state B/param", "path vs float32"]
    table = [head] + [[name, layout, spread(np.array(r["test_accuracy"]) * 100,
                                                          "{:.1f}"),
                       f"{r['state_bytes_per_param']:.3f}", spread(r["deviation"], "{:.3f}")]
                      for (name, layout), r in results.items()]
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in
                        enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))

    base = np.mean(results["fastopt float32", ONE]["test_accuracy"])
    checks = {}
    for sd in STATE_DTYPES[1:]:
        r = results.get((f"fastopt {sd}", ONE))
        if r is not None:
            checks[f"{sd} accuracy within {args.tolerance:.0%} of float32"] = \
                bool(np.mean(r["test_accuracy"]) >= base - args.tolerance)
            checks[f"{sd} state at most {MAX_STATE_BYTES[sd]} B/param"] = \
                bool(r["state_bytes_per_param"] <= MAX_STATE_BYTES[sd])
    ok = all(checks.values())
    for name, passed in checks.items():
        if not passed:
            print(f"MISSED: {name}")
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    print("RESULT " + json.dumps({
        "example": "state_dtype_digits", "ok": ok, "steps": steps, "seeds": len(seeds),
        "checks": checks, "skipped": missing,
        "rows": [{"optimizer": name, "layout": layout,
                  "test_accuracy": [round(a, 4) for a in r["test_accuracy"]],
                  "state_bytes_per_param": round(r["state_bytes_per_param"], 4),
                  "deviation": [round(d, 4) for d in r["deviation"]]}
                 for (name, layout), r in results.items()]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
