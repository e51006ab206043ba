"""In-place update of one parameter array: ``sgd``, ``adagrad``, ``adam``, ``adamw``.

This is the API for scientific code: you own the arrays (parameter,
gradient, optimizer state) and the step count; each call updates the
parameter and its state in place, in one fused pass over memory, and returns
None. Arrays may have any shape, must be C-contiguous (the gradient may have
any layout; a non-contiguous gradient is copied first), and all must share
one dtype, float32 or float64. The update rules are those of ``torch.optim``
(see each function).

Every argument is checked before anything is written: a call that raises
has changed nothing.

Guards, on every function: ``grad_scale`` divides the gradient first, fused
into the step (mixed-precision loss scaling; done as a multiplication by
``1 / grad_scale``, exact for powers of two). ``check_finite=True`` first
scans the unscaled gradient and, if any element is NaN or infinite, changes
nothing and returns False; otherwise it steps and returns True (on the GPU
this scan waits for its result). Without it a function returns None and
non-finite values propagate, as in torch.

``target`` picks the kernel: None (for NumPy arrays, serial below
``fastopt.config.PARALLEL_THRESHOLD`` elements, parallel above; for GPU
arrays, CUDA), "serial", "parallel" or "cuda".

GPU arrays (numba device arrays, CuPy arrays, PyTorch CUDA tensors: anything
with ``__cuda_array_interface__``) take the CUDA kernels, with the same
rules. All arrays of one call must then be on the GPU and C-contiguous; the
update is launched on the parameter's stream and the call returns without
waiting for it (README, "CUDA").
"""

from . import _checks as C
from . import _update as U

__all__ = ["sgd", "adagrad", "adam", "adamw"]


def _check_arrays(param, grad, states, target):
    """Check ``param``, ``grad`` and the named state arrays (and ``target`` against
    them); return ``(param, grad, {name: state})`` as the kernels take them."""
    param = C.check_param("param", param)
    if target is not None:
        C.check_target_matches(target, param, "param")
    states = {name: C.check_state(name, a, param, "param") for name, a in states}
    grad = C.check_grad("grad", grad, param, "param")
    C.check_no_overlap([("param", param), ("grad", grad), *states.items()])
    return param, grad, states


def _skip(grad, inv_scale, check_finite, target):
    """Whether a step with ``check_finite`` must be skipped (a non-finite gradient)."""
    return check_finite and U.any_nonfinite([grad], inv_scale, target)


def sgd(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0, dampening=0.0,
        weight_decay=0.0, nesterov=False, maximize=False, first_step=False, grad_scale=None,
        check_finite=False, target=None):
    r"""One SGD step on ``param``, in place (``torch.optim.SGD``'s rule).

    .. math::

        g &\leftarrow -g \ \text{if maximize};\quad g \leftarrow g + \lambda p \ \text{if}\ \lambda \ne 0 \\
        b &\leftarrow g \ \text{(first step)}, \quad b \leftarrow \mu b + (1-\tau) g \ \text{(later)} \\
        g &\leftarrow g + \mu b \ \text{(nesterov)}, \quad g \leftarrow b \ \text{(otherwise)} \\
        p &\leftarrow p - \eta g

    The momentum lines apply only when ``momentum`` (:math:`\mu`) is not 0;
    then ``momentum_buffer`` is required, and ``first_step=True`` fills it
    with the gradient instead of reading it (so it may start uninitialised).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(3); buf = np.empty(3)
        >>> F.sgd(p, np.full(3, 0.5), buf, lr=0.1, momentum=0.9, first_step=True)
        >>> p
        array([0.95, 0.95, 0.95])
    """
    lr = C.check_real("lr", lr, low=0.0)
    momentum = C.check_real("momentum", momentum, low=0.0)
    dampening = C.check_real("dampening", dampening)
    weight_decay = C.check_real("weight_decay", weight_decay, low=0.0)
    nesterov = C.check_flag("nesterov", nesterov)
    maximize = C.check_flag("maximize", maximize)
    first_step = C.check_flag("first_step", first_step)
    check_finite = C.check_flag("check_finite", check_finite)
    C.check_target(target)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")
    states = []
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer is required when momentum != 0")
        states.append(("momentum_buffer", momentum_buffer))
    param, grad, states = _check_arrays(param, grad, states, target)
    inv_scale = C.check_grad_scale(grad_scale, (param.dtype,))
    if _skip(grad, inv_scale, check_finite, target):
        return False
    U.sgd(p=param, g=grad, buf=states.get("momentum_buffer"), inv_scale=inv_scale, lr=lr,
          momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
          maximize=maximize, first_step=first_step, target=target)
    return True if check_finite else None


def adagrad(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False, grad_scale=None, check_finite=False, target=None):
    r"""One Adagrad step on ``param``, in place (``torch.optim.Adagrad``'s rule).

    .. math::

        g &\leftarrow -g \ \text{if maximize};\quad g \leftarrow g + \lambda p \ \text{if}\ \lambda \ne 0 \\
        s &\leftarrow s + g^2 \\
        p &\leftarrow p - \frac{\eta}{1 + (t-1)\,\delta}\,\frac{g}{\sqrt{s} + \epsilon}

    ``step`` is :math:`t`, the 1-based number of this step; :math:`\delta` is
    ``lr_decay``. ``state_sum`` starts filled with the initial accumulator
    value (torch's ``initial_accumulator_value``, default 0).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(2); s = np.zeros(2)
        >>> F.adagrad(p, np.array([1.0, -2.0]), s, step=1, lr=0.5)
        >>> p.round(6), s
        (array([0.5, 1.5]), array([1., 4.]))
    """
    step = C.check_step(step)
    lr = C.check_real("lr", lr, low=0.0)
    lr_decay = C.check_real("lr_decay", lr_decay, low=0.0)
    weight_decay = C.check_real("weight_decay", weight_decay, low=0.0)
    eps = C.check_real("eps", eps, low=0.0)
    maximize = C.check_flag("maximize", maximize)
    check_finite = C.check_flag("check_finite", check_finite)
    C.check_target(target)
    param, grad, states = _check_arrays(param, grad, [("state_sum", state_sum)], target)
    inv_scale = C.check_grad_scale(grad_scale, (param.dtype,))
    if _skip(grad, inv_scale, check_finite, target):
        return False
    U.adagrad(p=param, g=grad, state_sum=states["state_sum"], inv_scale=inv_scale, step=step, lr=lr,
              lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
              target=target)
    return True if check_finite else None


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
         betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
         decoupled_weight_decay=False, grad_scale=None, check_finite=False, target=None):
    r"""One Adam step on ``param``, in place (``torch.optim.Adam``'s rule).

    .. math::

        g &\leftarrow -g \ \text{if maximize} \\
        p &\leftarrow p\,(1 - \eta\lambda) \ \text{(decoupled)}, \quad
            g \leftarrow g + \lambda p \ \text{(otherwise; only if}\ \lambda \ne 0) \\
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \ \text{(amsgrad; then}\ \hat v \ \text{replaces}\ v) \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,
            \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``step`` is :math:`t`, the 1-based number of this step. ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq``, required with ``amsgrad``) start
    at zero. ``decoupled_weight_decay=True`` is AdamW (see :func:`adamw`).

    Example::

        >>> import numpy as np, fastopt.functional as F
        >>> p = np.ones(2, np.float32); m = np.zeros(2, np.float32); v = np.zeros(2, np.float32)
        >>> F.adam(p, np.array([0.5, -2.0], np.float32), m, v, step=1, lr=0.1)
        >>> p.round(4)
        array([0.9, 1.1], dtype=float32)
    """
    step = C.check_step(step)
    lr = C.check_real("lr", lr, low=0.0)
    beta1, beta2 = C.check_betas(betas)
    eps = C.check_real("eps", eps, low=0.0)
    weight_decay = C.check_real("weight_decay", weight_decay, low=0.0)
    amsgrad = C.check_flag("amsgrad", amsgrad)
    maximize = C.check_flag("maximize", maximize)
    decoupled_weight_decay = C.check_flag("decoupled_weight_decay", decoupled_weight_decay)
    check_finite = C.check_flag("check_finite", check_finite)
    C.check_target(target)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True")
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    param, grad, states = _check_arrays(param, grad, states, target)
    inv_scale = C.check_grad_scale(grad_scale, (param.dtype,))
    if _skip(grad, inv_scale, check_finite, target):
        return False
    U.adam(p=param, g=grad, exp_avg=states["exp_avg"], exp_avg_sq=states["exp_avg_sq"],
           max_exp_avg_sq=states.get("max_exp_avg_sq"), inv_scale=inv_scale, step=step, lr=lr,
           beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
           maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, target=target)
    return True if check_finite else None


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
          betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
          grad_scale=None, check_finite=False, target=None):
    r"""One AdamW step: :func:`adam` with decoupled weight decay (default 1e-2).

    The parameter is first scaled by :math:`1 - \eta\lambda`, then takes the
    Adam step without weight decay in the gradient (``torch.optim.AdamW``).
    """
    return adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, betas=betas,
                eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                decoupled_weight_decay=True, grad_scale=grad_scale, check_finite=check_finite,
                target=target)
