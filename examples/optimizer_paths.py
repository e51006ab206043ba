"""What an optimizer does, drawn: paths over loss contours, and the learning rate.

What it shows
    Two pictures a newcomer needs, made with the optimizer classes on a
    two-element parameter array.

    Left: SGD with momentum, Adagrad and Adam, each from the same start on
    Rosenbrock's banana-shaped valley, f(x, y) = (1 - x)^2 + 100 (y - x^2)^2,
    minimum at (1, 1). The gradient points mostly across the valley, so
    plain gradient steps zigzag; momentum builds up speed along it; Adam
    rescales each coordinate by its recent gradient size; Adagrad's step
    shrinks as its sum of squared gradients grows, so it crawls.

    Right: plain SGD on a quadratic bowl whose curvature is 10 times larger
    across than along (f = 0.5 z^T A z, eigenvalues 1 and 10), with three
    learning rates. Gradient descent on a quadratic is stable only while
    lr < 2 / (largest curvature) = 0.2. Too small (0.01): every step is
    safe but tiny, and it crawls. About right (0.18 = 2 / (1 + 10), which
    shrinks both directions at the same rate): it arrives in a few dozen
    steps, bouncing across the bowl. Too large (0.21): each bounce
    overshoots further than the last, and it diverges.

How to run
    pip install -e ".[examples]"
    python examples/optimizer_paths.py --plot paths.png
    python examples/optimizer_paths.py --quick      # fewer Rosenbrock steps

The last line printed is ``RESULT {json}``; the script exits with status 1
unless each run behaves as described above (SGD with momentum and Adam
reach the Rosenbrock minimum to within 0.05; the three learning rates
crawl, converge and diverge).
"""

import argparse
import json
import sys

import numpy as np

import fastopt

# --- Rosenbrock -----------------------------------------------------------------

START = (-1.5, 2.0)
MINIMUM = np.array([1.0, 1.0])
RACERS = {   # learning rates tuned by hand for this start
    "SGD, momentum 0.9 (lr 1e-3)": lambda p: fastopt.SGD(p, lr=1e-3, momentum=0.9),
    "Adagrad (lr 0.5)": lambda p: fastopt.Adagrad(p, lr=0.5),
    "Adam (lr 0.05)": lambda p: fastopt.Adam(p, lr=0.05),
}


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(z):
    x, y = z
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


# --- the quadratic bowl -----------------------------------------------------------

ANGLE = np.pi / 6
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]])
A = ROTATION @ np.diag([1.0, 10.0]) @ ROTATION.T   # curvatures 1 (along) and 10 (across)
# Start far out along the gentle direction, a little off it in the steep one.
BOWL_START = tuple(ROTATION @ np.array([-4.0, 0.6]))
BOWL_STEPS = 40
LEARNING_RATES = {"too small": 0.01, "about right": 0.18, "too large": 0.21}


def bowl(x, y):
    return 0.5 * (A[0, 0] * x * x + 2 * A[0, 1] * x * y + A[1, 1] * y * y)


def run(make_optimizer, grad, start, steps):
    """The path of ``steps`` optimizer steps from ``start`` (an array of points)."""
    z = np.array(start, dtype=np.float64)
    opt = make_optimizer([z])
    path = [z.copy()]
    for _ in range(steps):
        opt.step([grad(z)])      # z is updated in place
        path.append(z.copy())
    return np.array(path)


def plot(race, sweep, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.9), width_ratios=[1.25, 1, 1, 1])
    left = axes[0]
    x, y = np.meshgrid(np.linspace(-2, 2, 300), np.linspace(-1, 3, 300))
    left.contour(x, y, np.log10(rosenbrock(x, y) + 1e-3), levels=20, colors="0.75", linewidths=0.6)
    for (name, p), color, lw in zip(race.items(), ("C0", "C2", "C3"), (4, 2.2, 1.2)):
        left.plot(p[:, 0], p[:, 1], "-", color=color, lw=lw, alpha=0.8, label=name)
        left.plot(*p[-1], "o", color=color, ms=6, mec="k", mew=0.5)
    left.plot(*START, "ko", ms=5)
    left.plot(*MINIMUM, "k*", ms=12)
    left.set_xlim(-2, 2)
    left.set_ylim(-1, 3)
    steps = len(next(iter(race.values()))) - 1
    left.set_title(f"Rosenbrock's valley: {steps} steps each\n(dot: where each one ended)",
                   fontsize=10)
    left.legend(fontsize=8, loc="lower right")

    x, y = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-5, 5, 200))
    for ax, (name, p), color in zip(axes[1:], sweep.items(), ("C1", "C2", "C3")):
        ax.contour(x, y, bowl(x, y), levels=np.geomspace(0.05, 120, 14), colors="0.75",
                   linewidths=0.6)
        # Draw up to the first point outside the frame.
        outside = np.flatnonzero(np.abs(p).max(axis=1) > 5)
        p = p[:outside[0] + 1] if outside.size else p
        ax.plot(p[:, 0], p[:, 1], ".-", color=color, lw=1, ms=4)
        ax.plot(*BOWL_START, "ko", ms=5)
        ax.plot(0, 0, "k*", ms=12)
        ax.set_xlim(-5, 5)
        ax.set_ylim(-5, 5)
        ax.set_aspect("equal")
        ax.set_title(f"plain SGD, lr {LEARNING_RATES[name]}: {name}", fontsize=10)
    axes[2].set_xlabel(f"a bowl 10x steeper across than along; {BOWL_STEPS} steps. "
                       "Stable only for lr < 2 / 10.", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 Rosenbrock steps instead of 2,000")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the paths (needs matplotlib)")
    args = parser.parse_args(argv)
    steps = 1000 if args.quick else 2000

    print(f"Rosenbrock from {START}, {steps} steps; distance to the minimum (1, 1):")
    race = {name: run(make, rosenbrock_grad, START, steps) for name, make in RACERS.items()}
    distances = {name: float(np.linalg.norm(p[-1] - MINIMUM)) for name, p in race.items()}
    for name, dist in distances.items():
        print(f"  {name:<28} {dist:.2e}")

    print(f"Quadratic bowl, curvatures 1 and 10, plain SGD, {BOWL_STEPS} steps; "
          "distance to the minimum / at the start:")
    sweep = {name: run(lambda p, lr=lr: fastopt.SGD(p, lr=lr), lambda z: A @ z, BOWL_START,
                       BOWL_STEPS)
             for name, lr in LEARNING_RATES.items()}
    ratios = {name: float(np.linalg.norm(p[-1]) / np.linalg.norm(p[0])) for name, p in sweep.items()}
    for name, ratio in ratios.items():
        print(f"  lr {LEARNING_RATES[name]:<5} ({name:<11}) {ratio:.2e}")

    checks = {
        "momentum and Adam reach the minimum": all(
            dist < 0.05 for name, dist in distances.items() if not name.startswith("Adagrad")),
        "too small crawls": ratios["too small"] > 0.5,
        "about right converges": ratios["about right"] < 1e-3,
        "too large diverges": ratios["too large"] > 1.0,
    }
    for what, passed in checks.items():
        print(f"  {'ok ' if passed else 'NO '} {what}")
    if args.plot:
        plot(race, sweep, args.plot)
        print(f"plot written to {args.plot}")
    ok = all(checks.values())
    print("RESULT " + json.dumps({
        "example": "optimizer_paths", "ok": ok, "rosenbrock_steps": steps,
        "rosenbrock_distance": {k: float(f"{v:.3g}") for k, v in distances.items()},
        "bowl_distance_ratio": {k: float(f"{v:.3g}") for k, v in ratios.items()},
        "checks": checks}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
