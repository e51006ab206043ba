"""Fitting a model to measurements with the functional API, checked against SciPy.

What it shows
    Scientific code that owns its arrays: a nonlinear least-squares fit
    written as a plain NumPy loop, where ``fastopt.functional.adam`` updates
    the parameter vector and its two moment arrays in place each iteration,
    and the script keeps the step count and a learning-rate schedule itself.
    It uses Adam's amsgrad variant and stops on a gradient tolerance, as a
    fit should (see ``fit_adam`` for why plain Adam does not settle).
    The problem is a spectrum: two overlapping Gaussian lines on a sloping
    background, 400 noisy samples (made here with a fixed seed), eight
    parameters (each line's height, centre and width; the background's
    offset and slope). ``scipy.optimize.least_squares`` (trust-region, with
    the same analytic Jacobian) solves the same problem from the same start;
    the script prints both answers, SciPy's standard errors, and how far
    apart the answers are in units of those standard errors.

How to run
    pip install -e ".[examples]"
    python examples/curve_fit.py                 # a second or two
    python examples/curve_fit.py --plot fit.png  # also draw data, fit, residuals, convergence
    python examples/curve_fit.py --quick         # a looser gradient tolerance

The last line printed is ``RESULT {json}``; the script exits with status 1
unless Adam converged and every fitted parameter is within 1% of a standard
error of SciPy's.
"""

import argparse
import json
import sys

import numpy as np
from scipy.optimize import least_squares

import fastopt.functional as F
from fastopt.bench.cli import whole

NAMES = ["height1", "centre1", "width1", "height2", "centre2", "width2", "offset", "slope"]
TRUE = np.array([3.0, 4.2, 0.6, 2.0, 5.5, 0.9, 0.5, 0.05])
NOISE = 0.08
TOLERANCE = 0.01  # in standard errors
GTOL, QUICK_GTOL = 1e-12, 1e-9  # stop when the gradient's norm is below this


def make_data(seed):
    """400 samples of the true spectrum plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 10.0, 400)
    return x, model(TRUE, x)[0] + NOISE * rng.standard_normal(x.size)


def model(theta, x):
    """The spectrum at ``x`` and its Jacobian (len(x) x 8) with respect to theta."""
    h1, c1, w1, h2, c2, w2, offset, slope = theta
    jac = np.empty((x.size, 8))
    y = offset + slope * x
    for k, (h, c, w) in enumerate(((h1, c1, w1), (h2, c2, w2))):
        u = (x - c) / w
        peak = np.exp(-0.5 * u * u)
        y = y + h * peak
        jac[:, 3 * k] = peak                        # d/d height
        jac[:, 3 * k + 1] = h * peak * u / w        # d/d centre
        jac[:, 3 * k + 2] = h * peak * u * u / w    # d/d width
    jac[:, 6] = 1.0
    jac[:, 7] = x
    return y, jac


def fit_adam(x, y, theta0, max_iterations, gtol, lr=0.05, amsgrad=True):
    """Minimise half the mean squared residual with Adam, from theta0, until the
    gradient's norm is below gtol, or for max_iterations steps. Returns
    (theta, cost before each step and after the last, whether the norm got
    below gtol).

    amsgrad=True (the default here) divides by the largest second moment seen
    so far, so once the gradient vanishes the steps keep shrinking. Plain Adam
    divides by a running average that then decays towards zero: its steps grow
    back, and the fit jumps away from the optimum every few hundred iterations
    (try --plot to see both).
    """
    theta = theta0.copy()
    # Adam's state: our arrays, updated in place by each call.
    exp_avg, exp_avg_sq, max_exp_avg_sq = (np.zeros_like(theta) for _ in range(3))
    costs = []
    for t in range(1, max_iterations + 2):
        pred, jac = model(theta, x)
        r = pred - y
        costs.append(0.5 * np.mean(r * r))
        grad = jac.T @ r / x.size
        if np.linalg.norm(grad) < gtol:
            return theta, np.array(costs), True
        if t > max_iterations:
            break
        F.adam(theta, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=t, lr=lr, amsgrad=amsgrad)
    return theta, np.array(costs), False


def fit_scipy(x, y, theta0):
    """The same least-squares problem, by SciPy; returns (theta, standard errors)."""
    res = least_squares(lambda th: model(th, x)[0] - y, theta0, jac=lambda th: model(th, x)[1],
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    dof = x.size - theta0.size
    sigma2 = 2 * res.cost / dof                      # residual variance
    cov = sigma2 * np.linalg.inv(res.jac.T @ res.jac)
    return res.x, np.sqrt(np.diag(cov))


def plot(x, y, theta, curves, cost_ref, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9.6, 4.2))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 1], width_ratios=[3, 2])
    top, bottom = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
    right = fig.add_subplot(grid[:, 1])
    fitted = model(theta, x)[0]
    top.plot(x, y, ".", ms=3, color="0.6", label="measurements")
    top.plot(x, fitted, color="C3", label="fit (fastopt.functional.adam)")
    for k in range(2):
        h, c, w = theta[3 * k:3 * k + 3]
        top.plot(x, theta[6] + theta[7] * x + h * np.exp(-0.5 * ((x - c) / w) ** 2), "--",
                 color="C0", lw=1, label="the two lines" if k == 0 else None)
    top.legend(fontsize=8)
    top.set_ylabel("signal")
    top.set_title("Two overlapping lines on a sloping background", fontsize=10)
    top.tick_params(labelbottom=False)
    bottom.plot(x, y - fitted, ".", ms=3, color="0.4")
    bottom.axhline(0, color="C3", lw=1)
    bottom.set_ylabel("residual")
    bottom.set_xlabel("x")
    for label, (costs, color) in curves.items():
        right.plot(np.maximum(costs / cost_ref - 1, 1e-16), color=color, label=label, lw=1)
    right.set_ylim(1e-17, 1e9)                       # room for the legend above the curves
    right.legend(fontsize=8, loc="upper right")
    right.set_yscale("log")
    right.set_xlabel("Adam iteration")
    right.set_ylabel("cost / SciPy's optimal cost - 1")
    right.set_title("Convergence to SciPy's answer", fontsize=10)
    right.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"stop at a gradient norm of {QUICK_GTOL:g} instead of {GTOL:g}")
    parser.add_argument("--max-iterations", type=whole(1), default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw data, fit, residuals and convergence (also runs plain Adam)")
    args = parser.parse_args(argv)
    gtol = QUICK_GTOL if args.quick else GTOL

    x, y = make_data(args.seed)
    # A rough first guess, as one would read it off a plot of the data.
    theta0 = np.array([2.5, 4.0, 1.0, 2.5, 6.0, 1.0, 0.0, 0.0])
    theta, costs, converged = fit_adam(x, y, theta0, args.max_iterations, gtol)
    iterations = len(costs) - 1  # Adam steps taken (the last cost is after the last step)
    theta_ref, stderr = fit_scipy(x, y, theta0)
    cost_ref = 0.5 * np.mean((model(theta_ref, x)[0] - y) ** 2)
    distance = np.abs(theta - theta_ref) / stderr

    print(f"{len(x)} samples, {len(theta)} parameters; Adam (amsgrad) "
          + (f"stopped after {iterations:,} iterations (gradient norm < {gtol:g})" if converged
             else f"did NOT reach a gradient norm < {gtol:g} in {iterations:,} iterations"))
    print(f"{'parameter':<9} {'true':>7} {'fastopt':>10} {'scipy':>10} {'std err':>9} "
          f"{'|diff|/std err':>15}")
    for name, true, a, b, s, d in zip(NAMES, TRUE, theta, theta_ref, stderr, distance):
        print(f"{name:<9} {true:>7.3f} {a:>10.5f} {b:>10.5f} {s:>9.5f} {d:>15.1e}")
    cost_gap = costs[-1] / cost_ref - 1
    print(f"cost (half the mean squared residual): fastopt {costs[-1]:.12f}, "
          f"scipy {cost_ref:.12f} (relative difference {cost_gap:.1e})")
    ok = bool(converged and np.all(distance < TOLERANCE))
    print(f"largest difference: {distance.max():.1e} standard errors "
          f"(tolerance {TOLERANCE}): {'agree' if ok else 'DISAGREE'}")
    if args.plot:
        _, plain, _ = fit_adam(x, y, theta0, max(iterations, 15_000), 0.0, amsgrad=False)
        plot(x, y, theta, {"plain Adam": (plain, "0.55"),
                           f"amsgrad, stops at |g| < {gtol:g}": (costs, "C3")},
             cost_ref, args.plot)
        print(f"plot written to {args.plot}")
    print("RESULT " + json.dumps({"example": "curve_fit", "ok": ok, "converged": converged,
                                  "iterations": iterations,
                                  "max_diff_in_stderr": float(f"{distance.max():.3g}"),
                                  "tolerance_in_stderr": TOLERANCE,
                                  "cost_relative_diff": float(f"{cost_gap:.3g}")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
