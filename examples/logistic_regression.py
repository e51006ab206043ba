"""Logistic regression on real data, trained with SGD, Adagrad and Adam.

What it shows
    The optimizer classes (``fastopt.SGD``, ``fastopt.Adagrad``,
    ``fastopt.Adam``) used the way ``torch.optim`` is used: make the
    parameter arrays, hand them to the optimizer, compute the gradients
    yourself, call ``opt.step([...])``, and let a learning-rate scheduler
    (``fastopt.lr_scheduler.CosineAnnealingLR``, torch's cosine schedule)
    lower the rate after each epoch. The data is the Wisconsin breast-cancer
    set that ships inside scikit-learn (569 tumours, 30 features, benign or
    malignant; nothing is downloaded). Each optimizer trains the same model
    from the same start on the same mini-batches. The objective is the one
    scikit-learn's ``LogisticRegression`` minimises (mean cross-entropy plus
    an L2 penalty on the weights, not on the bias): the penalty is the
    optimizers' ``weight_decay``, set in a parameter group that holds only
    the weights. So the script can print, for each optimizer, its final
    objective beside the exact optimum (L-BFGS, run by scikit-learn on the
    same split) and its accuracy on a held-out test set.

How to run
    pip install -e ".[examples]"
    python examples/logistic_regression.py                  # 60 epochs, a few seconds
    python examples/logistic_regression.py --plot loss.png  # also draw the loss curves
    python examples/logistic_regression.py --quick          # 20 epochs

The last line printed is ``RESULT {json}``; the script exits with status 1
if any optimizer's test accuracy is below 95%, or its objective is more than
2% above the optimum.
"""

import argparse
import json
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import fastopt
from fastopt.lr_scheduler import CosineAnnealingLR
from fastopt.bench.cli import whole

TARGET_ACCURACY = 0.95
TARGET_GAP = 0.02          # final objective at most 2% above the optimum
C = 1.0                    # scikit-learn's inverse regularisation strength (its default)

# Starting learning rates, each the best of 0.003, 0.01, ..., 1 for this
# problem (standardised features, batches of 32, cosine schedule).
OPTIMIZERS = {
    "SGD (momentum 0.9)": lambda params: fastopt.SGD(params, lr=0.3, momentum=0.9),
    "Adagrad": lambda params: fastopt.Adagrad(params, lr=1.0),
    "Adam": lambda params: fastopt.Adam(params, lr=0.1),
}


def load_data(seed):
    """Standardised train and test splits (statistics from the train split only)."""
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=seed)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return (X_train - mean) / std, (X_test - mean) / std, y_train.astype(float), y_test.astype(float)


def loss_and_grads(w, b, X, y):
    """Mean binary cross-entropy of sigmoid(X @ w + b) and its gradients
    (the L2 penalty is not here: the optimizer adds it, as weight decay)."""
    z = X @ w + b[0]
    # log(1 + exp(z)) - y z, written with logaddexp so large |z| cannot overflow.
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    residual = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)  # d loss / d z
    return loss, X.T @ residual, np.array([residual.sum()])


def objective(w, b, X, y, weight_decay):
    """What scikit-learn minimises, divided by C * n: mean loss + weight_decay/2 |w|^2."""
    return loss_and_grads(w, b, X, y)[0] + 0.5 * weight_decay * (w @ w)


def accuracy(w, b, X, y):
    return float(np.mean(((X @ w + b[0]) > 0) == (y == 1)))


def train(make_optimizer, X, y, epochs, batch_size, seed):
    """Mini-batch training from w = 0; returns (w, b, objective after each epoch)."""
    w = np.zeros(X.shape[1])          # float64, like the data
    b = np.zeros(1)
    # scikit-learn's penalty |w|^2 / (2 C) on the summed loss is, on the mean
    # loss, weight decay 1 / (C n) on the weights; the bias is not penalised.
    weight_decay = 1.0 / (C * len(y))
    opt = make_optimizer([{"params": [w], "weight_decay": weight_decay},
                          {"params": [b], "weight_decay": 0.0}])
    # Cosine schedule, stepped once per epoch: the learning rate falls from its
    # start to 0 over the run, so the mini-batch noise dies down and the
    # iterates settle (torch's CosineAnnealingLR, with the same values).
    schedule = CosineAnnealingLR(opt, T_max=epochs)
    rng = np.random.default_rng(seed)  # same batches for every optimizer
    curve = [objective(w, b, X, y, weight_decay)]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            _, gw, gb = loss_and_grads(w, b, X[batch], y[batch])
            opt.step([gw, gb])         # w and b updated in place
        schedule.step()
        curve.append(objective(w, b, X, y, weight_decay))
    return w, b, curve


def plot(curves, optimum, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, curve in curves.items():
        ax.plot(np.array(curve) - optimum, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("objective - optimum")
    ax.set_title("Logistic regression on breast-cancer data:\n"
                 "distance to the exact optimum (L-BFGS)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 epochs instead of 60")
    parser.add_argument("--epochs", type=whole(1), help="number of passes over the training set")
    parser.add_argument("--batch-size", type=whole(1), default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png", help="draw the training curves (needs matplotlib)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 60)

    X_train, X_test, y_train, y_test = load_data(args.seed)
    print(f"breast-cancer data: {len(y_train)} train, {len(y_test)} test, "
          f"{X_train.shape[1]} features; {epochs} epochs, batches of {args.batch_size}")

    # The exact optimum of the same objective, for comparison.
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X_train, y_train)
    w_ref, b_ref = reference.coef_[0], reference.intercept_
    optimum = objective(w_ref, b_ref, X_train, y_train, 1.0 / (C * len(y_train)))

    results, curves = {}, {}
    print(f"{'optimizer':<20} {'objective':>10} {'above optimum':>14} {'test accuracy':>14}")
    for name, make_optimizer in OPTIMIZERS.items():
        w, b, curve = train(make_optimizer, X_train, y_train, epochs, args.batch_size, args.seed)
        acc = accuracy(w, b, X_test, y_test)
        gap = curve[-1] / optimum - 1
        results[name] = {"objective": round(curve[-1], 6), "gap": round(gap, 5),
                         "test_accuracy": round(acc, 4)}
        curves[name] = curve
        print(f"{name:<20} {curve[-1]:>10.5f} {gap:>14.2%} {acc:>14.1%}")
    ref_acc = accuracy(w_ref, b_ref, X_test, y_test)
    print(f"{'sklearn L-BFGS':<20} {optimum:>10.5f} {'(optimum)':>14} {ref_acc:>14.1%}")

    if args.plot:
        plot(curves, optimum, args.plot)
        print(f"training curves written to {args.plot}")

    ok = all(r["test_accuracy"] >= TARGET_ACCURACY and r["gap"] <= TARGET_GAP
             for r in results.values())
    print("RESULT " + json.dumps({"example": "logistic_regression", "ok": ok,
                                  "target_accuracy": TARGET_ACCURACY, "target_gap": TARGET_GAP,
                                  "optimizers": results, "optimum": round(optimum, 6),
                                  "sklearn_accuracy": round(ref_acc, 4)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
