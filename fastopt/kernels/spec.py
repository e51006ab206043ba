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
# Arrays of a state codec (``codecs.py``): bfloat16 bits (uint16), block
# codes (uint8), per-block absmax (float32), the maps (float32) and their
# look-up tables (uint8). Kernels with a codec take float32 parameters.
BF16, CODES, ABSMAX, TABLE, LUT = "bf16", "codes", "absmax", "table", "lut"
CODEC_ARGS = (ABSMAX, TABLE, LUT)  # arguments the loops use, never passed to the rule
# bfloat16 parameters (``_p16`` kernels): the parameter and gradient as
# bfloat16 bits (uint16), the float32 master copy (``_p16m``), the seed of
# stochastic rounding (uint32) and the flag that switches it on; the rule
# sees float32 values.
P16, MASTER, SEED, ROUNDING = "p16", "master", "seed", "rounding"
LOOP_ARGS = CODEC_ARGS + (MASTER, SEED, ROUNDING)
BLOCK_CODECS = {"int8": 256, "int4": 128}  # elements per block (as ``codecs.BLOCK``)


class Kernel(NamedTuple):
    """One kernel: ``args`` is a tuple of ``(name, kind)`` in call order.

    ``updated``: the arrays the element rule returns new values of, in its
    return order (rule kernels only). ``optional``: ``{array: (flag,
    stand_in)}``, an array used only when ``flag`` is set, and the array
    whose element the rule gets in its place otherwise. ``usual``: flags
    that choose between formulas and are usually off; the CPU loop has a
    copy for when they are all off (the rule given the constants), so the
    usual case computes one formula instead of both and a blend.
    """

    name: str
    args: tuple
    rule: bool = False
    updated: tuple = ()
    optional: dict = {}
    codec: str = ""  # "", "bf16", "int8" or "int4"
    coded: dict = {}  # {state array: "signed" or "unsigned"}, the arrays the codec stores
    rule_name: str = ""  # the element rule in ``rules.py`` (default: ``name``)
    dtypes: tuple = ("float32", "float64")
    usual: tuple = ()
    params: str = ""  # "": parameters of ``dtypes``; "p16", "p16m": bfloat16 (with a master copy)

    @property
    def names(self):
        return tuple(name for name, _ in self.args)

    @property
    def rule_names(self):
        """The arguments the element rule takes, in order."""
        return tuple(name for name, kind in self.args if kind not in LOOP_ARGS)

    @property
    def rule_function(self):
        return self.rule_name or self.name

    def of_kind(self, kind):
        return tuple(name for name, k in self.args if k == kind)


def _args(kind, names):
    return tuple((name, kind) for name in names.split())


def _rule_kernel(name, arrays, scalars, flags, updated, optional=None, usual=""):
    args = _args(ARRAY, arrays) + _args(SCALAR, scalars) + _args(FLAG, flags)
    return Kernel(name, args, True, tuple(updated.split()), optional or {},
                  usual=tuple(usual.split()))


def _coded(base, codec, coded):
    """``base`` with the state arrays ``coded`` stored by ``codec``: a block
    codec adds each one's ``<name>_absmax``, and ``qmaps``/``qluts`` after the arrays."""
    args = []
    for name, kind in base.args:
        if name not in coded:
            if kind == SCALAR and codec in BLOCK_CODECS and ("qmaps", TABLE) not in args:
                args += [("qmaps", TABLE), ("qluts", LUT)]
            args.append((name, kind))
        elif codec == "bf16":
            args.append((name, BF16))
        else:
            args += [(name, CODES), (f"{name}_absmax", ABSMAX)]
    return base._replace(name=f"{base.name}_{codec}", args=tuple(args), codec=codec,
                         coded=coded, rule_name=base.name, dtypes=("float32",))


def _bf16_params(base, master):
    """``base`` for bfloat16 parameters and gradients (uint16 bits), float32
    state and scalars; with ``master``, a float32 copy of the parameter
    (``master``, right after ``p``) is what the rule updates, and the
    parameter is written as its rounded copy. ``seed`` and ``stochastic``
    choose how the new parameter is rounded (``codecs``)."""
    args = []
    for name, kind in base.args:
        if name in ("p", "g"):
            args.append((name, P16))
            if name == "p" and master:
                args.append(("master", MASTER))
        else:
            args.append((name, kind))
    args += [("seed", SEED), ("stochastic", ROUNDING)]
    suffix = "p16m" if master else "p16"
    return base._replace(name=f"{base.name}_{suffix}", args=tuple(args), params=suffix,
                         rule_name=base.name, dtypes=("float32",))


# Which state each optimizer stores with a codec, and its sign (the map).
CODED_STATE = {"sgd": {"buf": "signed"}, "adagrad": {"state_sum": "unsigned"},
               "adam": {"exp_avg": "signed", "exp_avg_sq": "unsigned",
                        "max_exp_avg_sq": "unsigned"}}
CODECS = ("bf16", "int8", "int4")


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
        flags="maximize l2_decay amsgrad lerp_from_end",
        updated="p exp_avg exp_avg_sq max_exp_avg_sq",
        optional={"max_exp_avg_sq": ("amsgrad", "exp_avg_sq")},
        # A loop that keeps both formulas of these computes both and blends
        # them (about 1.3x the time of the loop for one on AVX2, Zen 3).
        usual="maximize l2_decay lerp_from_end"),
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

KERNELS.update({f"{rule}_{codec}": _coded(KERNELS[rule], codec, coded)
                for rule, coded in CODED_STATE.items() for codec in CODECS})

KERNELS.update({k.name: k for rule in CODED_STATE for master in (False, True)
                for k in [_bf16_params(KERNELS[rule], master)]})

RULE_KERNELS = tuple(k for k in KERNELS.values() if k.rule)


def kernel_name(rule, codec="", params=""):
    """The kernel of ``rule`` ("sgd", "adagrad", "adam") storing its state with
    ``codec``, for parameters ``params`` ("", or "p16"/"p16m": bfloat16)."""
    return "_".join(part for part in (rule, codec, params) if part)


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
                  MAX_BITS: types.Array(types.int64, 1, "C"),
                  BF16: types.Array(types.uint16, 1, "C"), CODES: types.Array(types.uint8, 1, "C"),
                  ABSMAX: types.Array(types.float32, 1, "C"),
                  TABLE: types.Array(types.float32, 1, "C"), LUT: types.Array(types.uint8, 1, "C"),
                  P16: types.Array(types.uint16, 1, "C"), SEED: types.uint32,
                  MASTER: types.Array(types.float32, 1, "C"),
                  ROUNDING: types.boolean}
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
# rules.py, codecs.py and _jit.py sha256: {digest}

'''

_PRELUDE = {
    "cpu": ("The serial and parallel CPU loops of the rule kernels.",
            "import numpy as np\nfrom numba import njit, prange\n\n"
            "from . import codecs, rules\nfrom ._jit import RULE, loop\n",
            "njit(**RULE)"),
    "cuda": ("The CUDA kernels of the update rules (grid-stride loops).",
             "import numpy as np\nfrom numba import cuda, float32\n\nfrom . import codecs, rules\n",
             "cuda.jit(device=True)"),
}

# The host's conversions of whole state arrays (state dicts, checkpoints):
# they compile the codecs too, so they live here, where the header's digest
# keeps numba's cache from loading them stale after ``codecs.py`` changes.
_HOST_CONVERSIONS = '''

# --- whole-array conversions on the host (``_state_dtype``) ---------------------------

@loop()
def quantize_blocks(x, codes, absmax, qmaps, off, size, qluts, loff, block, four):
    n = x.shape[0]
    for b in range((n + block - 1) // block):
        lo = b * block
        hi = min(lo + block, n)
        a = np.uint32(0)
        for i in range(lo, hi):
            a = codecs.block_amax(a, x[i])
        m = codecs.bits_f32(a)
        absmax[b] = m
        if four:
            codecs.store4(codes, lo, hi, x[lo:hi], m, qmaps, off, size, qluts, loff)
        else:
            codecs.store8(codes, lo, hi, x[lo:hi], m, qmaps, off, size, qluts, loff)


@loop()
def dequantize_blocks(codes, absmax, out, qmaps, off, block, four):
    for i in range(out.shape[0]):
        s = absmax[i // block]
        out[i] = codecs.decode4(codes, i, qmaps, off, s) if four \\
            else codecs.decode8(codes, i, qmaps, off, s)


@loop()
def to_bf16(x, out):
    for i in range(x.shape[0]):
        out[i] = codecs.bf16_encode(x[i])


@loop()
def from_bf16(bits, out):
    for i in range(bits.shape[0]):
        out[i] = codecs.bf16_decode(bits[i])
'''

_LOOPS = {  # (decorator, function-name suffix, loop header) per variant
    "cpu": [("@loop()", "_serial", "for i in range(p.shape[0]):"),
            ("@loop(parallel=True)", "_parallel", "for i in prange(p.shape[0]):")],
    "cuda": [("@cuda.jit(cache=True)", "", "for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):")],
}


def _rule_call(kernel, on, element, target, fixed=None):
    """``[targets, arguments]`` of the element rule's call: ``element(name)``
    reads an array, ``target(name)`` is where its new value goes; flags in
    ``fixed`` (``{flag: value}``) are passed as constants."""
    fixed = fixed or {}
    def read(name):
        if name in kernel.optional and name not in on:
            name = kernel.optional[name][1]
        return element(name)

    targets = ", ".join(target(a) if a not in kernel.optional or a in on else "_"
                        for a in kernel.updated)
    call = []
    for name, kind in kernel.args:
        if kind in LOOP_ARGS:
            continue
        if kind in (ARRAY, BF16, CODES, P16):
            call.append(read(name))
        elif name in fixed:
            call.append(str(fixed[name]))
        elif name in {flag for flag, _ in kernel.optional.values()}:
            array = next(a for a, (f, _) in kernel.optional.items() if f == name)
            call.append(str(array in on))
        else:
            call.append(name)
    return targets, call


def _loop_body(kernel, on, header, indent, fixed):
    """One loop of ``kernel`` with the optional arrays in ``on`` switched on
    and the flags in ``fixed`` constant."""
    bf16 = kernel.codec == "bf16"
    p16 = {"p", "g"} if kernel.params else set()

    def element(name):
        if name == "p" and kernel.params == "p16m":
            return "master[i]"
        if (bf16 and name in kernel.coded) or name in p16:
            return f"codecs.bf16_decode({name}[i])"
        return f"{name}[i]"

    def target(name):
        return f"_{name}" if (bf16 and name in kernel.coded) or name in p16 else f"{name}[i]"

    targets, call = _rule_call(kernel, on, element, target, fixed)
    pad = " " * indent
    stores = [f"{pad}    {a}[i] = codecs.bf16_encode(_{a})" for a in kernel.updated
              if bf16 and a in kernel.coded and (a not in kernel.optional or a in on)]
    if kernel.params:
        if kernel.params == "p16m":
            stores.append(f"{pad}    master[i] = _p")
        stores.append(f"{pad}    p[i] = codecs.bf16_encode_stochastic(_p, seed, i)"
                      if fixed.get("stochastic") else f"{pad}    p[i] = codecs.bf16_encode(_p)")
    return [pad + header, f"{pad}    {targets} = _{kernel.rule_function}(",
            *_wrap(call, indent + 8, ")"), *stores]


def _block_body(kernel, on, header, indent, target, fixed):
    """The loop over blocks of a block-codec kernel (optional arrays in ``on``
    switched on, flags in ``fixed`` constant): per block, decode each coded
    state into ``_work``, update there (finding the new absmax), then encode."""
    size = BLOCK_CODECS[kernel.codec]
    maps = 256 if kernel.codec == "int8" else 16
    bits = "8" if kernel.codec == "int8" else "4"
    rows = {a: k for k, a in enumerate(kernel.coded)}
    qmaps, qluts = "qmaps", "qluts"
    live = [a for a in kernel.coded if a not in kernel.optional or a in on]
    where = {a: (0, 0) if kernel.coded[a] == "signed" else (2 * maps, 65536) for a in kernel.coded}
    pad = " " * indent
    lines = [pad + header,
             f"{pad}    lo = b * {size}",
             f"{pad}    hi = min(lo + {size}, n)"]
    lines += [f"{pad}    s_{a} = {a}_absmax[b]" for a in live]
    lines += [f"{pad}    a_{a} = np.uint32(0)" for a in live]
    # Three loops: decoding (table look-ups), the rule (no look-ups, so LLVM
    # vectorises it), encoding. Each indexes views that start at the block
    # (int4: two codes a byte, and a block starts on a byte): an index that
    # starts at 0 cannot be negative, so numba's wraparound goes.
    coded_view = "[lo:hi]" if bits == "8" else "[lo >> 1:(hi + 1) >> 1]"
    lines += [f"{pad}    {a}_c = {a}{coded_view}" for a in live]
    if live:
        lines.append(f"{pad}    for j in range(hi - lo):")
        lines += [f"{pad}        _work{rows[a]}[j] = codecs.decode{bits}({a}_c, j, {qmaps}, "
                  f"{where[a][0]}, s_{a})" for a in live]
    plain = [name for name, kind in kernel.args if kind == ARRAY]
    lines += [f"{pad}    {a}_b = {a}[lo:hi]" for a in plain]
    lines.append(f"{pad}    for j in range(hi - lo):")
    targets, call = _rule_call(
        kernel, on, lambda a: f"_work{rows[a]}[j]" if a in kernel.coded else f"{a}_b[j]",
        lambda a: f"x_{a}" if a in kernel.coded else f"{a}_b[j]", fixed)
    lines += [f"{pad}        {targets} = _{kernel.rule_function}(",
              *_wrap(call, indent + 12, ")")]
    for a in live:
        lines += [f"{pad}        _work{rows[a]}[j] = x_{a}",
                  f"{pad}        a_{a} = codecs.block_amax(a_{a}, x_{a})"]
    for a in live:
        lines += [f"{pad}    m_{a} = codecs.bits_f32(a_{a})",
                  f"{pad}    {a}_absmax[b] = m_{a}",
                  f"{pad}    codecs.store{bits}({a}, lo, hi, _work{rows[a]}, m_{a}, {qmaps}, "
                  f"{where[a][0]}, {maps}, {qluts}, {where[a][1]})"]
    return lines


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


# Block-codec loops: (start lines, the loop header) per variant. A CPU loop
# runs over chunks of blocks, each chunk with its own work rows; a CUDA
# thread handles whole blocks (grid-stride), with its work rows in local memory.
_CHUNK = 16  # blocks per CPU chunk (prange iteration)
# One work array per coded state (separate arrays: LLVM can tell that writing
# one does not change another, and vectorises the rule's loop).
_WORK = {"cpu": "_work{k} = np.empty({size}, np.float32)",
         "cuda": "_work{k} = cuda.local.array({size}, float32)"}
_BLOCK_LOOPS = {
    "_serial": ("cpu", "for b in range(nb):"),
    "_parallel": (None, "for c in prange((nb + {chunk} - 1) // {chunk}):"),
    "": ("cuda", "for b in range(cuda.grid(1), nb, cuda.gridsize(1)):"),
}


def _function(kernel, decorator, suffix, header, target):
    lines = [decorator, f"def {kernel.name}{suffix}(", *_wrap(kernel.names, 8, "):")]
    optional = list(kernel.optional)
    body, base = _loop_body, 4
    if kernel.codec in BLOCK_CODECS:
        size = BLOCK_CODECS[kernel.codec]
        start, header = _BLOCK_LOOPS[suffix]
        fill = dict(size=size, chunk=_CHUNK)
        work = [_WORK[start or "cpu"].format(k=k, size=size) for k in range(len(kernel.coded))]
        lines += ["    n = p.shape[0]", f"    nb = (n + {size - 1}) // {size}"]
        lines += ["    " + line for line in (work if start else [])]
        header = header.format(**fill)
        if suffix == "_parallel":
            inner = "for b in range(c * {chunk}, min(c * {chunk} + {chunk}, nb)):".format(**fill)

            def body(kernel, on, header, indent, fixed):
                return [" " * indent + header, *[" " * (indent + 4) + w for w in work],
                        *_block_body(kernel, on, inner, indent + 4, target, fixed)]
        else:
            def body(kernel, on, header, indent, fixed):
                return _block_body(kernel, on, header, indent, target, fixed)

    # CPU loops of plain and bfloat16 state get a loop of their own for the
    # usual case, the ``usual`` flags all off, in a function of its own: LLVM
    # then also takes the remaining flags' tests out of that loop, which it
    # does not in a function of many loops. Block-coded state spends its
    # time in look-ups.
    usual = kernel.usual if target == "cpu" and kernel.codec not in BLOCK_CODECS else ()
    helpers = []

    # Loops split on each optional array's flag, then on stochastic rounding.
    rounding = [name for name, kind in kernel.args if kind == ROUNDING]

    def split(k, on, indent, fixed):
        if k == len(optional) and rounding and rounding[0] not in fixed:
            lines.append(" " * indent + f"if {rounding[0]}:")
            split(k, on, indent + 4, {**fixed, rounding[0]: True})
            lines.append(" " * indent + "else:")
            split(k, on, indent + 4, {**fixed, rounding[0]: False})
            return
        if k == len(optional):
            if usual:
                helper = (f"_{kernel.name}{suffix}_usual" + "".join(f"_{a}" for a in sorted(on))
                          + "".join("_sr" for flag in rounding if fixed[flag]))
                helpers.extend([decorator, f"def {helper}(", *_wrap(kernel.names, 8, "):"),
                                *body(kernel, on, header, 4, {**dict.fromkeys(usual, False),
                                                              **fixed}),
                                "", ""])
                lines.append(" " * indent + f"if not ({' or '.join(usual)}):")
                lines.extend([" " * (indent + 4) + f"{helper}(",
                              *_wrap(kernel.names, indent + 8, ")")])
                lines.append(" " * indent + "else:")
                indent += 4
            lines.extend(body(kernel, on, header, indent, fixed))
            return
        flag = kernel.optional[optional[k]][0]
        lines.append(" " * indent + f"if {flag}:")
        split(k + 1, on | {optional[k]}, indent + 4, fixed)
        lines.append(" " * indent + "else:")
        split(k + 1, on, indent + 4, fixed)

    split(0, frozenset(), base, {})
    return "\n".join(helpers + lines)


def generate(target):
    """The source text of ``GENERATED[target]`` ("cpu" or "cuda")."""
    what, imports, device = _PRELUDE[target]
    digest = hashlib.sha256(b"".join((HERE / f).read_bytes()
                                     for f in ("rules.py", "codecs.py", "_jit.py")))
    parts = [_HEADER.format(what=what, digest=digest.hexdigest()[:16]) + imports]
    parts.append("\n".join(f"_{k.name} = {device}(rules.{k.name})" for k in RULE_KERNELS
                           if not k.codec and not k.params))
    for kernel in RULE_KERNELS:
        for decorator, suffix, header in _LOOPS[target]:
            parts.append("\n" + _function(kernel, decorator, suffix, header, target))
    text = "\n\n".join(parts) + "\n"
    return text + _HOST_CONVERSIONS if target == "cpu" else text


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
    import argparse
    argparse.ArgumentParser(
        prog="python -m fastopt.kernels.spec",
        description="Regenerate fastopt/kernels/_cpu_loops.py and _cuda_loops.py from the "
                    "kernels declared in spec.py (takes no arguments)").parse_args()
    for path in write():
        print(f"wrote {path}")
