"""A step's kernel calls, made again while nothing they depend on has changed.

A checked step of host arrays costs tens of microseconds of Python (checks,
scalars, numba's dispatch of twenty arguments) before the kernel runs; on a
tensor of a few thousand elements that is most of the step. After such a
step, ``Replay`` keeps each parameter's kernel arguments. The next
``step(grads)`` with default options replays them when every fact the checks
established still holds — the same groups holding the same parameters and
hyperparameter objects, the parameters still writable, C-contiguous and of
their shapes, the same state arrays, and gradients that are plain C-contiguous
arrays of the parameters' shapes and dtypes, not overlapping them — changing
only the gradient and the scalars that follow the step count, and calling
numba's compiled function for the kernel's exact types (its argument checks
are the ones just made). Anything else takes the checked path, which records
a new replay. Results are bitwise those of the checked path.
"""

import operator

import numpy as np

from . import config
from ._dispatch import direct, kernel, settled
from ._update import SCALARS
from .kernels.spec import KERNELS

_is = operator.is_


class _Entry:
    """One parameter's recorded kernel call: ``fn`` the compiled kernel while
    the choice of kernel is settled (else None: ask ``kernel`` each step)."""

    __slots__ = ("index", "p", "shape", "dtype", "state", "held", "name", "args", "varying",
                 "last_g", "hyper", "fn", "scalar")

    def __init__(self, opt, index, p, name, args, hyper):
        self.index, self.p, self.shape, self.dtype = index, p, p.shape, p.dtype
        self.state, self.name, self.args, self.hyper = opt.state[index], name, list(args), hyper
        self.held = tuple((key, self.state[key]) for key in opt.spec.state_keys
                          if self.state.get(key) is not None)
        names = KERNELS[name].names
        self.varying = tuple(names.index(arg) for arg in opt._STEP_ARGS)
        self.last_g = None
        fn = settled(name, opt.target, p)
        self.fn = None if fn is None else direct(fn, name, p.dtype)
        self.scalar = SCALARS[p.dtype]


class Replay:
    """What a checked step of ``opt`` launched: ``launches`` is ``[(index,
    parameter, kernel name, argument tuple, checked hyperparameters)]`` for
    the parameters it updated, of ``n`` parameters."""

    __slots__ = ("group_list", "groups", "n", "entries", "absent", "threshold")

    def __init__(self, opt, launches, n):
        self.group_list = opt.param_groups
        self.groups = tuple((group, group["params"], tuple(group["params"]),
                             tuple(group.values())) for group in opt.param_groups)
        self.n = n
        self.entries = tuple(_Entry(opt, *launch) for launch in launches)
        present = {e.index for e in self.entries}
        self.absent = tuple(i for i in range(n) if i not in present)
        self.threshold = config.PARALLEL_THRESHOLD

    @staticmethod
    def eligible(opt, params, grads, inv_scale, check_finite, clip):
        """Whether a checked step with these arguments can be replayed: host
        arrays, default options, hyperparameters that cannot change in place."""
        return (inv_scale == 1.0 and not check_finite and clip is None
                and all(type(p) is np.ndarray for p in params)
                and all(g is None or type(g) is np.ndarray for g in grads)
                and all(entry[2] is not None for entry in opt._hyper_cache.values()))

    def run(self, opt, grads):
        """Step ``opt`` with ``grads`` by replaying, if everything still holds;
        return whether it did (if not, nothing was changed)."""
        if (type(grads) is not list and type(grads) is not tuple) or len(grads) != self.n:
            return False
        with opt._lock:
            groups = opt.param_groups
            if (opt._replay is not self or groups is not self.group_list
                    or len(groups) != len(self.groups)):
                return False
            for (group, params, members, values), now in zip(self.groups, groups):
                if (now is not group or group["params"] is not params
                        or len(params) != len(members) or not all(map(_is, params, members))
                        or not all(map(_is, group.values(), values))):
                    return False
            state = opt.state
            flats = []
            for e in self.entries:
                g, p, shape = grads[e.index], e.p, e.shape
                if (type(g) is not np.ndarray or g.dtype is not e.dtype or g.shape != shape
                        or p.shape != shape or state.get(e.index) is not e.state):
                    return False
                flags = p.flags
                if not (flags.writeable and flags.c_contiguous and g.flags.c_contiguous):
                    return False
                for key, a in e.held:
                    if e.state.get(key) is not a:
                        return False
                if g is not e.last_g:
                    if np.may_share_memory(g, p):
                        return False
                    e.last_g = g
                flats.append(g if g.ndim == 1 else g.reshape(-1))
            if self.absent and any(grads[i] is not None for i in self.absent):
                return False
            # Everything holds: from here on, nothing raises.
            scalars = opt._step_scalars
            same_choice = config.PARALLEL_THRESHOLD == self.threshold
            for e, g in zip(self.entries, flats):
                args, p = e.args, e.p
                args[0] = p if p.ndim == 1 else p.reshape(-1)
                args[1] = g
                fn = e.fn if same_choice else None
                if fn is None:
                    chosen = kernel(e.name, opt.target, p)
                    fn = direct(chosen, e.name, e.dtype)
                if fn is not None:  # numba's compiled function: takes Python floats
                    for position, value in zip(e.varying, scalars(e.state, e.hyper)):
                        args[position] = value
                    fn(*args)
                else:  # a dispatcher, through a timer or guard: scalars of the dtype
                    for position, value in zip(e.varying, scalars(e.state, e.hyper)):
                        args[position] = e.scalar(value) if type(value) is float else value
                    chosen(*args)
            return True
