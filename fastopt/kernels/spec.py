"""Every kernel's arguments, declared once; the loops of the rule kernels, generated.

A kernel is declared here as its ordered arguments, each an array, a scalar
(of the arrays' dtype) or a flag (a bool, the same for every element). From
that one declaration derive:

- the CPU loops (serial and parallel) and the CUDA kernels of the update
  rules: ``generate`` writes them as Python source into ``_cpu_loops.py`` and
  ``_cuda_loops.py``, real files, so numba's disk cache (keyed per function
  and source file) works as for hand-written code;
- the numba argument types (``signature``), to compile ahead of time (the
  warm-up, the codegen and PTX tests);
- ``pack``: keyword-only functions that put the arguments in the kernel's
  order, so callers name every scalar and two of them cannot be swapped.

A rule kernel's loop passes every argument to its element rule in
``rules.py`` in the declared order (positionally: the CUDA simulator takes
no keywords), and the rule's parameters are the kernel's, by name and order
(checked by ``tests/test_kernels.py``); array arguments become the current
element. An
*optional* array is one a flag switches on; while it is off the array may be
empty. The loop is then split in two on that flag, one loop that reads and
writes the array and one that never touches it (passing the rule a stand-in
element it ignores). Each loop's memory accesses are then unconditional,
which is what lets LLVM vectorise it on every CPU: a load whose address is
chosen by a flag inside the loop defeats its dependence analysis.

Kernels with hand-written bodies (``any_nonfinite``, ``fill``, the
rooflines) are declared here too; a test checks their parameters against
the declaration.

To add a variant: declare it in ``KERNELS`` (and, for a rule kernel, write
its element rule in ``rules.py``), run ``python -m fastopt.kernels.spec``
to regenerate the loops, then call it through ``pack``.
"""

import hashlib
from pathlib import Path
from typing import NamedTuple

ARRAY, SCALAR, FLAG, FOUND = "array", "scalar", "flag", "found"
# The norm kernels': a float array's elements as same-width signed integers
# (and a scalar of that integer type), and the CUDA kernels' accumulators.
BITS, BITS_SCALAR, SUM, MAX_BITS = "bits", "bits_scalar", "sum", "max_bits"


class Kernel(NamedTuple):
    """One kernel: ``args`` is a tuple of ``(name, kind)`` in call order.

    ``updated``: the arrays the element rule returns new values of, in its
    return order (rule kernels only). ``optional``: ``{array: (flag,
    stand_in)}``, an array used only when ``flag`` is set, and the array
    whose element the rule gets in its place otherwise.
    """

    name: str
    args: tuple
    rule: bool = False
    updated: tuple = ()
    optional: dict = {}

    @property
    def names(self):
        return tuple(name for name, _ in self.args)

    def of_kind(self, kind):
        return tuple(name for name, k in self.args if k == kind)


def _args(kind, names):
    return tuple((name, kind) for name in names.split())


def _rule_kernel(name, arrays, scalars, flags, updated, optional=None):
    args = _args(ARRAY, arrays) + _args(SCALAR, scalars) + _args(FLAG, flags)
    return Kernel(name, args, True, tuple(updated.split()), optional or {})


def _roofline(k):
    return Kernel(f"roofline_{k}", _args(ARRAY, "g") + _args(SCALAR, "s")
                  + _args(ARRAY, " ".join("abcd"[:k])))


KERNELS = {k.name: k for k in [
    _rule_kernel(
        "sgd",
        arrays="p g buf",
        scalars="inv_scale neg_lr weight_decay momentum one_minus_dampening",
        flags="maximize use_weight_decay use_momentum first_step nesterov",
        updated="p buf",
        optional={"buf": ("use_momentum", "p")}),
    _rule_kernel(
        "adagrad",
        arrays="p g state_sum",
        scalars="inv_scale neg_clr weight_decay eps",
        flags="maximize use_weight_decay",
        updated="p state_sum"),
    _rule_kernel(
        "adam",
        arrays="p g exp_avg exp_avg_sq max_exp_avg_sq",
        scalars="inv_scale lerp_weight lerp_weight_complement beta2 one_minus_beta2 "
                "neg_step_size bias_correction2_sqrt eps weight_decay decay_factor",
        flags="maximize l2_decay decoupled_decay amsgrad lerp_from_end",
        updated="p exp_avg exp_avg_sq max_exp_avg_sq",
        optional={"max_exp_avg_sq": ("amsgrad", "exp_avg_sq")}),
    # Whether any element of g * inv_scale is NaN or infinite. CPU: returns
    # the count; CUDA: the kernel sets found[0] to 1 (one flag per step).
    Kernel("any_nonfinite", _args(ARRAY, "g") + _args(SCALAR, "inv_scale")),
    Kernel("any_nonfinite_cuda", _args(ARRAY, "g") + _args(SCALAR, "inv_scale") + (("found", FOUND),)),
    Kernel("fill", _args(ARRAY, "a") + _args(SCALAR, "value")),
    # A gradient's norm, for clipping: the sum of the squares of g * inv_scale
    # (accumulated in float64), and the largest |g| as the bits of g with the
    # sign bit masked off (``mask``): for floats >= 0 the integer order is the
    # float order, NaN above infinity. CPU: returned; CUDA: added to sum[0],
    # max-ed into max_bits[0] (one atomic per block).
    Kernel("sq_norm", _args(ARRAY, "g") + _args(SCALAR, "inv_scale")),
    Kernel("sq_norm_cuda", _args(ARRAY, "g") + _args(SCALAR, "inv_scale") + (("total", SUM),)),
    Kernel("max_abs_bits", (("bits", BITS), ("mask", BITS_SCALAR))),
    Kernel("max_abs_bits_cuda", (("bits", BITS), ("mask", BITS_SCALAR), ("largest", MAX_BITS))),
    *[_roofline(k) for k in (1, 2, 3, 4)],
]}

RULE_KERNELS = tuple(k for k in KERNELS.values() if k.rule)


# --- argument order -------------------------------------------------------------

def _packer(kernel):
    """``f(*, name=value, ...)`` returning the values in ``kernel``'s order."""
    names = ", ".join(kernel.names)
    namespace = {}
    exec(f"def {kernel.name}(*, {names}):\n    return ({names},)\n", namespace)
    fn = namespace[kernel.name]
    fn.__doc__ = f"The arguments of kernel {kernel.name!r}, named, in its order."
    return fn


pack = {k.name: _packer(k) for k in KERNELS.values()}


def signature(name, dtype):
    """The numba argument types of kernel ``name`` for arrays of ``dtype``."""
    from numba import types
    scalar = types.float32 if str(dtype) == "float32" else types.float64
    integer = types.int32 if str(dtype) == "float32" else types.int64
    numba_type = {ARRAY: types.Array(scalar, 1, "C"), SCALAR: scalar, FLAG: types.boolean,
                  FOUND: types.Array(types.int32, 1, "C"), BITS: types.Array(integer, 1, "C"),
                  BITS_SCALAR: integer, SUM: types.Array(types.float64, 1, "C"),
                  MAX_BITS: types.Array(types.int64, 1, "C")}
    return tuple(numba_type[kind] for _, kind in KERNELS[name].args)


# --- generated loops ------------------------------------------------------------

HERE = Path(__file__).resolve().parent
GENERATED = {"cpu": HERE / "_cpu_loops.py", "cuda": HERE / "_cuda_loops.py"}

_HEADER = '''"""{what}

Generated by ``python -m fastopt.kernels.spec`` from the declarations in
``spec.py``: do not edit (``tests/test_kernels.py`` checks it is current).
"""

# numba's disk cache is keyed by this file, not by the rules it inlines: the
# digest below changes this file whenever they change, so no stale loop loads.
# rules.py and _jit.py sha256: {digest}

'''

_PRELUDE = {
    "cpu": ("The serial and parallel CPU loops of the rule kernels.",
            "from numba import njit, prange\n\nfrom . import rules\nfrom ._jit import RULE, loop\n",
            "njit(**RULE)"),
    "cuda": ("The CUDA kernels of the update rules (grid-stride loops).",
             "from numba import cuda\n\nfrom . import rules\n",
             "cuda.jit(device=True)"),
}

_LOOPS = {  # (decorator, function-name suffix, loop header) per variant
    "cpu": [("@loop()", "_serial", "for i in range(p.shape[0]):"),
            ("@loop(parallel=True)", "_parallel", "for i in prange(p.shape[0]):")],
    "cuda": [("@cuda.jit(cache=True)", "", "for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):")],
}


def _loop_body(kernel, on, header, indent):
    """One loop of ``kernel`` with the optional arrays in ``on`` switched on."""
    def element(name):
        if name in kernel.optional and name not in on:
            name = kernel.optional[name][1]
        return f"{name}[i]"

    targets = ", ".join(f"{a}[i]" if a not in kernel.optional or a in on else "_"
                        for a in kernel.updated)
    call = []
    for name, kind in kernel.args:
        if kind == ARRAY:
            call.append(element(name))
        elif name in {flag for flag, _ in kernel.optional.values()}:
            array = next(a for a, (f, _) in kernel.optional.items() if f == name)
            call.append(str(array in on))
        else:
            call.append(name)
    pad = " " * indent
    return [pad + header, f"{pad}    {targets} = _{kernel.name}(",
            *_wrap(call, indent + 8, ")")]


def _wrap(items, indent, end):
    """``items`` comma-separated in lines of at most 100 characters, then ``end``."""
    lines, line = [], " " * indent
    for item in items:
        if len(line) + len(item) + 2 > 100 and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += item + ", "
    lines.append(line.rstrip().rstrip(",") + end)
    return lines


def _function(kernel, decorator, suffix, header):
    lines = [decorator, f"def {kernel.name}{suffix}(", *_wrap(kernel.names, 8, "):")]
    optional = list(kernel.optional)

    def split(k, on, indent):
        if k == len(optional):
            lines.extend(_loop_body(kernel, on, header, indent))
            return
        flag = kernel.optional[optional[k]][0]
        lines.append(" " * indent + f"if {flag}:")
        split(k + 1, on | {optional[k]}, indent + 4)
        lines.append(" " * indent + "else:")
        split(k + 1, on, indent + 4)

    split(0, frozenset(), 4)
    return "\n".join(lines)


def generate(target):
    """The source text of ``GENERATED[target]`` ("cpu" or "cuda")."""
    what, imports, device = _PRELUDE[target]
    digest = hashlib.sha256(b"".join((HERE / f).read_bytes() for f in ("rules.py", "_jit.py")))
    parts = [_HEADER.format(what=what, digest=digest.hexdigest()[:16]) + imports]
    parts.append("\n".join(f"_{k.name} = {device}(rules.{k.name})" for k in RULE_KERNELS))
    for kernel in RULE_KERNELS:
        for decorator, suffix, header in _LOOPS[target]:
            parts.append("\n" + _function(kernel, decorator, suffix, header))
    return "\n\n".join(parts) + "\n"


def write():
    """Regenerate the loop modules; return the paths that changed."""
    changed = []
    for target, path in GENERATED.items():
        text = generate(target)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
