"""fastopt.scipy: the four optimizers as scipy.optimize.minimize methods."""

import functools
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize")
minimize = scipy_optimize.minimize

import fastopt  # noqa: E402
import fastopt.scipy as fs  # noqa: E402
from fastopt import lr_scheduler  # noqa: E402
from fastopt._spec import SPECS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"sgd": "SGD", "adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW"}
C = np.linspace(-1.0, 2.0, 5)


def quadratic(x, c=C):
    """0.5 |x - c|^2 and its gradient."""
    d = x - c
    return 0.5 * float(d @ d), d


# --- the target: logistic regression to BFGS's optimum --------------------

@pytest.fixture(scope="module")
def logistic():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    A = np.hstack([X, np.ones((len(y), 1))])  # last column: the bias
    lam = 1.0 / len(y)                        # scikit-learn's C=1, on the mean loss

    def fun(theta, A, y):
        z = A @ theta
        w = theta[:-1]
        f = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * (w @ w)
        g = A.T @ ((1.0 / (1.0 + np.exp(-z)) - y) / len(y))
        g[:-1] += lam * w
        return f, g

    best = minimize(fun, np.zeros(A.shape[1]), args=(A, y.astype(float)), jac=True,
                    method="BFGS", options={"gtol": 1e-10})
    assert best.success
    return fun, (A, y.astype(float)), best.fun


# Per method, a learning rate (and schedule) that suits the problem; the
# penalty is in fun, so AdamW's own decay is off.
TARGET_OPTIONS = {
    "sgd": {"lr": 0.5, "momentum": 0.9,
            "lr_schedule": functools.partial(lr_scheduler.CosineAnnealingLR, T_max=2000)},
    "adagrad": {"lr": 0.5},
    "adam": {"lr": 0.01},
    "adamw": {"lr": 0.01, "weight_decay": 0.0},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_logistic_regression_reaches_bfgs_optimum(logistic, name):
    fun, args, best = logistic
    maxiter = 10_000
    res = minimize(fun, np.zeros(args[0].shape[1]), args=args, jac=True,
                   method=getattr(fs, name),
                   options={"maxiter": maxiter, "gtol": 1e-5, **TARGET_OPTIONS[name]})
    assert res.success and res.status == 0, res.message
    assert res.nit < maxiter
    assert (res.fun - best) / best <= 1e-5
    assert np.linalg.norm(res.jac) <= 1e-5


# --- the result -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_result_fields(name):
    res = minimize(quadratic, np.zeros(5), jac=True, method=getattr(fs, name),
                   options={"lr": 0.1, "maxiter": 5})
    assert isinstance(res, scipy_optimize.OptimizeResult)
    assert set(res) >= {"x", "fun", "jac", "nit", "nfev", "njev", "success", "status", "message"}
    assert res.x.shape == (5,) and res.x.dtype == np.float64
    f, g = quadratic(res.x)
    assert res.fun == f and np.array_equal(res.jac, g)
    assert (res.nit, res.nfev, res.njev, res.status, res.success) == (5, 6, 6, 1, False)
    assert "Maximum number of iterations" in res.message


@pytest.mark.parametrize("name", sorted(METHODS))
def test_same_iterates_as_the_optimizer_class(name):
    """minimize takes exactly the class's steps, bit for bit."""
    hyper = {"lr": 0.05}
    res = minimize(quadratic, np.zeros(5), jac=True, method=getattr(fs, name),
                   options={"maxiter": 7, "gtol": 0.0, **hyper})
    x = np.zeros(5)
    opt = getattr(fastopt, METHODS[name])([x], **hyper)
    for _ in range(7):
        opt.step([quadratic(x)[1]])
    assert np.array_equal(res.x, x)


def test_lr_schedule_matches_a_hand_loop():
    make = functools.partial(lr_scheduler.StepLR, step_size=3, gamma=0.5)
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd,
                   options={"lr": 0.3, "momentum": 0.5, "maxiter": 10, "gtol": 0.0,
                            "lr_schedule": make})
    x = np.zeros(5)
    opt = fastopt.SGD([x], lr=0.3, momentum=0.5)
    sched = make(opt)
    for _ in range(10):
        opt.step([quadratic(x)[1]])
        sched.step()
    assert np.array_equal(res.x, x)


def test_gtol_stops_and_tol_sets_it():
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd,
                   options={"lr": 0.5, "gtol": 1e-3, "maxiter": 1000})
    assert res.success and 0 < res.nit < 1000 and np.linalg.norm(res.jac) <= 1e-3
    loose = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd, tol=1e-1,
                     options={"lr": 0.5})
    assert loose.success and loose.nit < res.nit and np.linalg.norm(loose.jac) <= 1e-1
    at_optimum = minimize(quadratic, C.copy(), jac=True, method=fs.adam)
    assert at_optimum.success and at_optimum.nit == 0 and at_optimum.nfev == 1


def test_norm_option():
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd,
                   options={"lr": 0.5, "gtol": 1e-3, "norm": np.inf})
    assert res.success and np.max(np.abs(res.jac)) <= 1e-3 < np.linalg.norm(res.jac) * 2


def test_ftol_stops():
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd,
                   options={"lr": 0.01, "ftol": 1e-3, "gtol": 0.0, "maxiter": 10_000})
    assert res.success and res.status == 0 and res.nit < 10_000


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_nonfinite_objective_stops():
    res = minimize(lambda x: (float("nan"), x.copy()), np.ones(3), jac=True, method=fs.adam)
    assert (res.status, res.success, res.nit) == (3, False, 0)
    blowup = minimize(lambda x: (float(x @ x), 1e200 * np.ones_like(x) * np.exp(x @ x)),
                      np.ones(3), jac=True, method=fs.sgd, options={"lr": 1.0})
    assert blowup.status == 3 and not blowup.success and blowup.nit >= 1


# --- x0, fun and jac --------------------------------------------------------------------

def test_x0_flattened_float64_and_not_mutated():
    seen = []

    def fun(x):
        seen.append(x)
        return quadratic(x, C[:4])

    x0 = np.zeros((2, 2), np.float32)
    res = fs.adam(fun, x0, jac=True, lr=0.1, maxiter=3)  # called directly: any shape
    assert res.x.shape == (4,) and res.x.dtype == np.float64
    assert all(x.shape == (4,) and x.dtype == np.float64 for x in seen)
    assert len({id(x) for x in seen}) == len(seen) and not np.array_equal(seen[0], seen[-1])
    assert not x0.any()
    ints = minimize(quadratic, [0, 0, 0, 0, 0], jac=True, method=fs.adam, options={"lr": 0.1})
    assert ints.x.dtype == np.float64


def test_float32_on_request():
    res = minimize(lambda x: (float(x @ x), 2 * x), np.ones(3), jac=True, method=fs.adam,
                   options={"dtype": "float32", "lr": 0.1, "maxiter": 3})
    assert res.x.dtype == np.float32 and res.jac.dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        fs.adam(quadratic, np.zeros(5), jac=True, dtype="float16")


def test_gradient_of_other_dtype_and_shape_is_converted():
    res = fs.sgd(lambda x: (0.5 * float(x @ x), [list(x[:2]), list(x[2:])]), np.ones(4),
                 jac=True, lr=0.5, maxiter=2, gtol=0.0)
    np.testing.assert_allclose(res.x, 0.25)


def test_callable_jac():
    res = minimize(lambda x: quadratic(x)[0], np.zeros(5), jac=lambda x: quadratic(x)[1],
                   method=fs.adam, options={"lr": 0.1, "maxiter": 4})
    twin = minimize(quadratic, np.zeros(5), jac=True, method=fs.adam,
                    options={"lr": 0.1, "maxiter": 4})
    assert np.array_equal(res.x, twin.x) and res.nfev == res.njev == 5


def test_args_passed():
    res = minimize(quadratic, np.zeros(5), args=(C + 1,), jac=True, method=fs.sgd,
                   options={"lr": 0.5, "gtol": 1e-8})
    np.testing.assert_allclose(res.x, C + 1, atol=1e-7)


@pytest.mark.parametrize("jac", [None, False, "2-point"])
def test_needs_a_gradient(jac):
    calls = []
    with pytest.raises(ValueError, match="need the gradient.*finite differences"):
        minimize(lambda x: calls.append(x) or 0.0, np.zeros(2), jac=jac, method=fs.adam)
    assert not calls


def test_bounds_and_constraints_refused():
    with pytest.raises(ValueError, match="bounds"):
        minimize(quadratic, np.zeros(5), jac=True, method=fs.adam, bounds=[(0, 1)] * 5)
    with pytest.raises(ValueError, match="constraints"):
        minimize(quadratic, np.zeros(5), jac=True, method=fs.adam,
                 constraints={"type": "eq", "fun": lambda x: x[0]})
    with pytest.warns(RuntimeWarning, match="Hessian"):
        minimize(quadratic, np.zeros(5), jac=True, method=fs.adam, hess=lambda x: np.eye(5),
                 options={"maxiter": 1})


@pytest.mark.parametrize("bad, exc, match", [
    (lambda x: 1.0, TypeError, "objective, gradient"),
    (lambda x: (np.ones(2), x), ValueError, "scalar"),
    (lambda x: (1.0, np.ones(7)), ValueError, "gradient"),
    (lambda x: (1.0, x.astype(complex)), TypeError, "gradient"),
])
def test_bad_fun_output(bad, exc, match):
    with pytest.raises(exc, match=match):
        minimize(bad, np.zeros(5), jac=True, method=fs.adam)


@pytest.mark.parametrize("x0, exc", [(np.zeros(0), ValueError), (np.zeros(2, complex), TypeError),
                                     (["a", "b"], TypeError)])
def test_bad_x0(x0, exc):
    with pytest.raises(exc, match="x0"):
        fs.adam(quadratic, x0, jac=True)


def test_fun_and_jac_get_their_own_copies():
    # A fun that works in place on its argument must not change what jac
    # sees (SciPy's methods give each its own copy): BFGS and Adam agree.
    a = np.arange(3.0)

    def fun(x):
        x -= a
        return 0.5 * float(x @ x)

    def jac(x):
        return x - a

    want = minimize(fun, np.zeros(3), jac=jac, method="BFGS").x
    got = minimize(fun, np.zeros(3), jac=jac, method=fs.adam,
                   options={"lr": 0.1, "maxiter": 3000}).x
    np.testing.assert_allclose(got, want, atol=1e-4)


# --- callbacks ------------------------------------------------------------------------

def test_callback_plain_form_gets_copies():
    seen = []
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.adam, callback=seen.append,
                   options={"lr": 0.1, "maxiter": 4})
    assert len(seen) == res.nit == 4
    assert np.array_equal(seen[-1], res.x) and seen[-1] is not res.x
    assert not np.array_equal(seen[0], seen[1])


def test_callback_intermediate_result_form():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)

    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.adam, callback=callback,
                   options={"lr": 0.1, "maxiter": 3})
    assert len(seen) == 3 and all(isinstance(r, scipy_optimize.OptimizeResult) for r in seen)
    assert seen[-1].fun == res.fun and np.array_equal(seen[-1].x, res.x)
    assert [r.nit for r in seen] == [1, 2, 3]


@pytest.mark.parametrize("form", ["plain", "intermediate_result"])
def test_callback_stop_iteration(form):
    def stop(k):
        if k >= 2:
            raise StopIteration
    count = []
    if form == "plain":
        def callback(xk):
            count.append(xk)
            stop(len(count))
    else:
        def callback(intermediate_result):
            count.append(intermediate_result)
            stop(len(count))
    res = minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd, callback=callback,
                   options={"lr": 0.1})
    assert (res.nit, res.status, res.success) == (2, 99, False)
    assert res.message == "`callback` raised `StopIteration`."


# --- options -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_options_are_the_specs_hyperparameters(name):
    spec = SPECS[METHODS[name]]
    params = inspect.signature(getattr(fs, name)).parameters
    hypers = {p.name: p.default for p in spec.parameters() if p.name != "maximize"}
    assert {k: params[k].default for k in hypers} == hypers
    assert "maximize" not in params and "decoupled_weight_decay" not in params or name == "adam"


def test_unknown_option_warns_and_bad_values_raise():
    with pytest.warns(scipy_optimize.OptimizeWarning, match="betaz"):
        minimize(quadratic, np.zeros(5), jac=True, method=fs.adam,
                 options={"betaz": (0.9, 0.99), "maxiter": 1})
    calls = []

    def fun(x):
        calls.append(x)
        return quadratic(x)

    for options, exc, match in [({"lr": -1.0}, ValueError, "lr"),
                                ({"momentum": "x"}, TypeError, "momentum"),
                                ({"maxiter": -1}, ValueError, "maxiter"),
                                ({"maxiter": 2.5}, TypeError, "maxiter"),
                                ({"gtol": float("nan")}, ValueError, "gtol"),
                                ({"gtol": -1.0}, ValueError, "gtol"),
                                ({"ftol": "a"}, TypeError, "ftol"),
                                ({"norm": 0}, ValueError, "norm"),
                                ({"maximize": True}, ValueError, "maximize"),
                                ({"lr_schedule": 3}, TypeError, "lr_schedule"),
                                ({"lr_schedule": lambda opt: None}, TypeError, "lr_schedule")]:
        with pytest.raises(exc, match=match):
            minimize(fun, np.zeros(5), jac=True, method=fs.sgd, options=options)
    assert not calls
    with pytest.raises(TypeError, match="callback"):
        minimize(fun, np.zeros(5), jac=True, method=fs.sgd, callback=3)


def test_disp(capsys):
    minimize(quadratic, np.zeros(5), jac=True, method=fs.sgd,
             options={"lr": 0.5, "disp": True})
    out = capsys.readouterr().out
    assert "Optimization terminated successfully." in out and "Iterations:" in out


def test_no_warning_on_the_plain_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minimize(quadratic, np.zeros(5), jac=True, method=fs.adamw, options={"lr": 0.1})


def test_fastopt_works_without_scipy():
    """import fastopt never needs SciPy; fastopt.scipy says how to get it."""
    code = "\n".join([
        "import sys",
        "class Block:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name.split('.')[0] == 'scipy':",
        "            raise ImportError('no scipy here')",
        "sys.meta_path.insert(0, Block())",
        "import numpy as np, fastopt",
        "fastopt.Adam([np.zeros(2)]).step([np.ones(2)])",
        "import fastopt.lr_scheduler",
        "assert 'scipy' not in sys.modules",
        "try:",
        "    import fastopt.scipy",
        "except ImportError as e:",
        "    print(e)",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install" in proc.stdout and "scipy" in proc.stdout
