"""State codecs: how a reduced-precision state element or block is read and written.

The update rules of ``rules.py`` see float32 values; a codec turns stored
state into those values and back. Written once as plain Python, compiled by
the generated loops for the CPU (``njit``) and for CUDA (device functions),
and run as Python by the CUDA simulator.

- ``bfloat16``: one ``uint16`` per element (the upper half of a float32);
  ``bf16_decode`` shifts it up, ``bf16_encode`` rounds to nearest, ties to
  even, with integer operations on the float32's bits (NaN stays NaN).
  ``bf16_encode_stochastic`` rounds up with probability equal to the
  dropped fraction (stochastic rounding: unbiased on average), the random
  16 bits of element ``i`` drawn by ``random16(seed, i)``, a hash of both
  (so serial, parallel and CUDA loops round alike, and a seed repeats a run).
- ``int8`` and ``int4``: block-wise quantization. Each block of ``BLOCK[kind]``
  elements stores one code per element (int4: two per byte, the even
  element in the low nibble) and one float32 ``absmax``, the largest
  magnitude in the block. A code indexes a sorted table ``MAPS[name]`` of
  values in [-1, 1]; an element is ``table[code] * absmax``. Encoding
  ``x`` picks the nearest table value to ``x / absmax`` (computed as
  ``x * (1 / absmax)``; 0 when absmax is 0): the code is the number of
  midpoints between neighbouring table values below it (ties go to the
  lower code, NaN to the top code). ``LUTS[name]`` makes that one table
  look-up and one comparison: indexed by the upper 16 bits of the float32,
  it holds the code of the lowest value of that range of floats, and each
  such range holds at most one midpoint (checked when the tables are built).
  ``store8`` and ``store4`` give the same codes by arithmetic, which
  vectorises, and use the look-up only for a block holding an element too
  near a midpoint for float32 arithmetic to place (see below).

Maps (after Dettmers et al. 2022 and Li et al. 2023): ``signed8`` and
``unsigned8`` are dynamic-exponent maps (a run of ``e`` zero bits, a one,
then ``k`` linear fraction bits for magnitude ``10**-e * (0.1 + 0.9 (f + 1)
/ 2**k)``), for the first moment (signed) and the second (unsigned);
``signed4`` is the 4-bit dynamic-exponent map of the first moment and
``linear4`` the second moment's linear map without zero, ``(j + 1) / 16``.

Arrays passed to the kernels: ``qmaps`` (float32) is, for each of the two
maps a kernel uses (signed then unsigned), the table then its midpoints
(the last midpoint is +inf); ``qluts`` (uint8) the two look-up tables.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

BLOCK = {"int8": 256, "int4": 128}
MAP_NAMES = {"int8": ("signed8", "unsigned8"), "int4": ("signed4", "linear4")}
MIN_BLOCKWISE_SIZE = 4096  # smaller tensors keep full-precision state

_U16 = np.uint32(16)
_ROUND = np.uint32(0x7FFF)
_ONE_BIT = np.uint32(1)
_ABS = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_MAX_BITS = np.uint32(0x7F7FFFFF)  # the largest finite float32
_QUIET = np.uint32(0x0040)
_LOW32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_LOW16_32 = np.uint32(0xFFFF)
_ZERO = np.float32(0)
_ONE = np.float32(1)


# --- bit casts: plain Python here, one LLVM bitcast when compiled ----------------

def f32_bits(x):
    """The bits of float32 ``x`` as a uint32."""
    return np.float32(x).view(np.uint32)


def bits_f32(u):
    """The float32 whose bits are uint32 ``u``."""
    return np.uint32(u).view(np.float32)


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, u):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@overload(f32_bits, target="generic")
def _f32_bits_jit(x):
    if x == types.float32:
        return lambda x: _f32_bits(x)


@overload(bits_f32, target="generic")
def _bits_f32_jit(u):
    if isinstance(u, types.Integer):  # numba widens integer arithmetic: take the low 32 bits
        return lambda u: _bits_f32(np.uint32(u))


# murmur3's 32-bit finaliser: (xor-shift, multiplier) rounds, then a last xor-shift.
_FMIX_ROUNDS, _FMIX_LAST = ((16, 0x85EBCA6B), (13, 0xC2B2AE35)), 16


def fmix32(x):
    """murmur3's 32-bit finaliser of uint32 ``x`` (a bijection that spreads
    every input bit over the output): xor-shift 16, times 0x85EBCA6B,
    xor-shift 13, times 0xC2B2AE35, xor-shift 16, all modulo 2**32. Plain
    Python here; compiled, 32-bit integer operations (numba would widen
    them to 64 bits, halving the vector lanes)."""
    x = int(x)
    for shift, multiplier in _FMIX_ROUNDS:
        x = ((x ^ (x >> shift)) * multiplier) & 0xFFFFFFFF
    return np.uint32(x ^ (x >> _FMIX_LAST))


@intrinsic
def _fmix32(typingctx, x):
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        h = args[0]
        for shift, multiplier in _FMIX_ROUNDS:
            h = builder.xor(h, builder.lshr(h, ir.Constant(i32, shift)))
            h = builder.mul(h, ir.Constant(i32, multiplier))
        return builder.xor(h, builder.lshr(h, ir.Constant(i32, _FMIX_LAST)))
    return types.uint32(types.uint32), codegen


@overload(fmix32, target="generic")
def _fmix32_jit(x):
    if isinstance(x, types.Integer):  # numba widens integer arithmetic: take the low 32 bits
        return lambda x: _fmix32(np.uint32(x))


def _jitable(fn):
    """Make ``fn`` callable from compiled code of every target (inlined as if
    jitted with the caller's types); it stays a plain Python function."""
    overload(fn, target="generic", strict=False,
             jit_options=dict(error_model="numpy", fastmath=False))(lambda *args: fn)
    return fn


# --- bfloat16 -----------------------------------------------------------------------

@_jitable
def bf16_decode(u):
    """bfloat16 bits ``u`` (uint16) as a float32 (exact)."""
    return bits_f32(np.uint32(u) << _U16)


def bf16_encode(x):
    """Float32 ``x`` rounded to the nearest bfloat16 (ties to even), as uint16 bits."""
    b = f32_bits(x)
    if (b & _ABS) > _INF_BITS:  # NaN: keep the sign and the top payload bits, quiet
        return np.uint16((b >> _U16) | _QUIET)
    return np.uint16((b + _ROUND + ((b >> _U16) & _ONE_BIT)) >> _U16)


@_jitable
def random16(seed, i):
    """16 random bits (as a uint32 below 65,536) for element ``i`` under the
    32-bit ``seed``: ``fmix32`` of the index (its high half folded into its
    low) xor the seed, low half."""
    j = np.uint64(i)
    return np.uint32(fmix32(((j >> _U32) ^ j ^ np.uint64(seed)) & _LOW32) & _LOW16_32)


def bf16_encode_stochastic(x, seed, i):
    """Float32 ``x`` rounded to a bfloat16 neighbour at random (uint16 bits):
    up, away from zero, with probability (dropped bits) / 2**16, using
    ``random16(seed, i)``. Infinities stay; NaN as ``bf16_encode``."""
    b = f32_bits(x)
    if (b & _ABS) > _INF_BITS:
        return np.uint16((b >> _U16) | _QUIET)
    return np.uint16((b + random16(seed, i)) >> _U16)


# Compiled, both encodings are one 32-bit integer sequence: the upper half
# of the float's bits plus an addend (nearest: ``_ROUND`` plus the kept
# half's lowest bit; stochastic: the random bits), or, for NaN, the upper half
# made quiet, selected before narrowing to 16 bits. Written with numba's
# integers, the NaN test became a blend after narrowing (each result packed
# three times) or, written as a select, widened the lanes to 64 bits.

def _bf16_codegen(builder, x, addend=None):
    i32 = ir.IntType(32)
    b = builder.bitcast(x, i32)
    high = builder.lshr(b, ir.Constant(i32, int(_U16)))
    if addend is None:
        addend = builder.add(ir.Constant(i32, int(_ROUND)),
                             builder.and_(high, ir.Constant(i32, int(_ONE_BIT))))
    rounded = builder.lshr(builder.add(b, addend), ir.Constant(i32, int(_U16)))
    quiet = builder.or_(high, ir.Constant(i32, int(_QUIET)))
    nan = builder.fcmp_unordered("uno", x, x)
    return builder.trunc(builder.select(nan, quiet, rounded), ir.IntType(16))


@intrinsic
def _bf16_nearest(typingctx, x):
    return types.uint16(types.float32), lambda context, builder, sig, args: _bf16_codegen(
        builder, args[0])


@intrinsic
def _bf16_plus(typingctx, x, addend):
    return types.uint16(types.float32, types.uint32), lambda context, builder, sig, args: (
        _bf16_codegen(builder, *args))


@overload(bf16_encode, target="generic")
def _bf16_encode_jit(x):
    if x == types.float32:
        return lambda x: _bf16_nearest(x)


@overload(bf16_encode_stochastic, target="generic")
def _bf16_encode_stochastic_jit(x, seed, i):
    if x == types.float32:
        return lambda x, seed, i: _bf16_plus(x, random16(seed, i))


# --- block-wise quantization ---------------------------------------------------------

@_jitable
def decode8(codes, i, qmaps, off, absmax):
    """Element ``i`` of 8-bit ``codes`` on the map at ``qmaps[off:]``, times ``absmax``."""
    return qmaps[off + np.int32(codes[i])] * absmax


@_jitable
def decode4(codes, i, qmaps, off, absmax):
    """Element ``i`` of 4-bit ``codes`` (two per byte, even element low)."""
    return qmaps[off + ((np.int32(codes[i >> 1]) >> ((i & 1) << 2)) & 15)] * absmax


def amax(a, x):
    """``max(a, |x|)`` on the bits: ``a`` is the uint32 bits of the largest
    magnitude so far. Magnitudes order as their bits do, and NaN's bits are
    above infinity's, so NaN propagates; an integer maximum vectorises."""
    b = f32_bits(x) & _ABS
    return b if b > a else a


def block_amax(a, x):
    """``amax`` for a block's scale, which stays finite: infinity and NaN
    count as the largest finite float32. Such an element then takes the top
    code and the block's other elements their codes at that scale (near 0,
    until the state decays), where an infinite or NaN scale made every code
    of the block decode to NaN, for good. (Leaving NaN out would be kinder,
    but LLVM turns that test into a condition on the running maximum,
    which it does not vectorise.)"""
    b = f32_bits(x) & _ABS
    b = b if b < _MAX_BITS else _MAX_BITS
    return b if b > a else a


# Compiled, one unsigned 32-bit maximum (and minimum, for ``block_amax``):
# written with numba's integers, the comparison widened the lanes to 64 bits
# (no packed maximum, a 64-bit compare and blend per four elements), which
# cost as much as the update.
def _compile_bit_max(fn, top):
    @intrinsic
    def bit_max(typingctx, a, x):
        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            b = builder.and_(builder.bitcast(args[1], i32), ir.Constant(i32, int(_ABS)))
            if top is not None:
                t = ir.Constant(i32, int(top))
                b = builder.select(builder.icmp_unsigned("<", b, t), b, t)
            return builder.select(builder.icmp_unsigned(">", b, args[0]), b, args[0])
        return types.uint32(types.uint32, types.float32), codegen

    @overload(fn, target="generic")
    def compiled(a, x):
        if a == types.uint32 and x == types.float32:
            return lambda a, x: bit_max(a, x)
        return fn


_compile_bit_max(amax, None)
_compile_bit_max(block_amax, _MAX_BITS)


@_jitable
def inverse(absmax):
    """The scale that normalises a block: ``1 / absmax``, 0 when absmax is not > 0."""
    return _ONE / absmax if absmax > _ZERO else _ZERO


@_jitable
def encode(x, inv, qmaps, off, size, qluts, loff):
    """The code of ``x * inv`` on the map of ``size`` values at ``qmaps[off:]``."""
    n = x * inv
    c = np.int32(qluts[loff + (f32_bits(n) >> _U16)])
    c = c + np.int32(1) if qmaps[off + size + c] < n else c
    return c if n == n else np.int32(size - 1)


# Encoding by arithmetic. The exact encoding above is two dependent table
# look-ups per element, which no CPU loop vectorises (AVX2 has no byte
# gather, and LLVM avoids the gathers it has). Every map here has a simple
# shape: ``linear4`` is evenly spaced, so its code is exact arithmetic; a
# dynamic map is a few decades, each evenly spaced. For a magnitude ``a``,
# comparing it with the midpoints between decades (exact constants from the
# table) gives its decade ``K`` (``2**K`` values, scaled by ``10**-(m-1-K)``);
# within it, ``y = (a * 10**(m-1-K) - 0.1) * 2**K / 0.9 - 1/2`` counts the
# midpoints below ``a``: ``floor(y)``, clamped to the decade. In float32, ``y``
# is within 2e-5 of its exact value (each rounding, of ``a * 10**e``, of the
# constants and of the table's midpoints themselves, is at most half an ulp
# of 1.0, and y scales them by at most 2**7 / 0.9); so ``floor(y)`` is the
# exact count unless ``y`` lies within ``_NEAR`` (five times that) of an
# integer, and a block holding such an element is encoded again exactly.
# tests/test_state_dtype.py compares the two encodings on a sample of all
# float32 inputs and every midpoint's neighbours (on all 2**32 inputs with
# FASTOPT_EXHAUSTIVE=1: no difference). On CUDA, NVVM contracts the two
# multiply-adds of ``y`` into FMAs, which round once instead of twice: y is
# then nearer its exact value, and the codes the same (an emulation of every
# contraction found unflagged errors only within 1.2e-5 of an integer).
# Random data lands within ``_NEAR`` once in 5,000 elements: about one block
# of 256 in twenty is encoded twice.

_NEAR = np.float32(1e-4)
_TENTH = np.float32(0.1)
_NINTH = np.float32(1 / 0.9)
_HALF = np.float32(0.5)
_INF32 = np.float32(np.inf)
_MAGIC = np.float32(1.5 * 2 ** 23)


def next_up(a):
    """The float32 above ``a`` (finite, +0.0 or positive); infinity and
    -0.0 (which the signed maps code as +0.0) stay."""
    b = f32_bits(a)
    return bits_f32(b + _ONE_BIT) if b < _INF_BITS else np.float32(a)


@intrinsic
def _next_up(typingctx, a):
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        b = builder.bitcast(args[0], i32)
        finite = builder.icmp_unsigned("<", b, ir.Constant(i32, int(_INF_BITS)))
        up = builder.select(finite, builder.add(b, ir.Constant(i32, 1)), b)
        return builder.bitcast(up, ir.FloatType())
    return types.float32(types.float32), codegen


@overload(next_up, target="generic")
def _next_up_jit(a):
    if a == types.float32:
        return lambda a: _next_up(a)


@_jitable
def nearest_integer(y):
    """``y`` (float32) rounded to an integer, ties to even, by adding and
    subtracting 1.5 * 2**23 (exact for ``|y| < 2**22``; beyond, within 1):
    two additions that vectorise, where numba has no float32 ``floor`` that
    both targets compile and CPU loops would convert to 64-bit integers."""
    return (y + _MAGIC) - _MAGIC


@_jitable
def _rank(a, gaps, scales):
    """``(count, near)`` for magnitude ``a`` on a dynamic map: the number of
    its positive values' midpoints (after the first) below ``a``, as a
    float32, and 1.0 if that count may be off by one (else 0.0)."""
    scale, width = scales[0], _ONE
    for k in range(7):  # (a constant count: compiled, unrolled into selects)
        if gaps[k] < a:
            scale, width = scales[k + 1], np.float32(2 << k)
    y = (a * scale - _TENTH) * (_NINTH * width) - _HALF
    rounded = nearest_integer(y)
    below = rounded - (_ONE if rounded > y else _ZERO)  # floor(y)
    near = _ONE if abs(y - rounded) < _NEAR else _ZERO
    return width - _ONE + min(max(below, _ZERO), width - _ONE), near


@_jitable
def _signed_code(n, gaps, scales, h0, half):
    """``(code, near)`` of ``n`` (not NaN) on a signed dynamic map. A
    negative value exactly at a midpoint takes the larger magnitude (the
    lower code): counted as one ulp larger."""
    neg = n <= _ZERO
    a = next_up(-n) if neg else n
    count, near = _rank(a, gaps, scales)
    count = count + (_ONE if h0 < a else _ZERO)
    return (half - count if neg else half + _ONE + count), near


@_jitable
def _unsigned_code(n, gaps, scales):
    """``(code, near)`` of ``n`` (not NaN) on the unsigned dynamic map,
    whose first midpoint is 0."""
    count, near = _rank(n, gaps, scales)
    return count + (_ONE if n > _ZERO else _ZERO), near


@_jitable
def _linear_code(n):
    """The code of ``n`` (not NaN) on ``linear4``, exactly: its midpoints
    are ``(j + 1.5) / 16``, and ``16 n - 1.5`` is exact where it matters."""
    y = n * np.float32(16) - np.float32(1.5)
    rounded = nearest_integer(y)
    above = rounded + (_ONE if rounded < y else _ZERO)  # ceil(y)
    return min(max(above, _ZERO), np.float32(15))


@_jitable
def store8(codes, lo, hi, work, absmax, qmaps, off, size, qluts, loff):
    """Encode ``work[:hi - lo]`` into ``codes[lo:hi]``, as ``encode`` would,
    on int8's first map (``off`` 0, ``signed8``) or its second (``unsigned8``)."""
    inv = inverse(absmax)
    out = codes[lo:hi]
    top = np.float32(size - 1)
    near = np.uint32(0)
    if off == 0:
        gaps, scales, h0, half = _SIGNED8
        for j in range(hi - lo):
            n = work[j] * inv
            c, close = _signed_code(n, gaps, scales, h0, half)
            near = amax(near, close)
            out[j] = np.int32(c if n == n else top)
    else:
        gaps, scales, _, _ = _UNSIGNED8
        for j in range(hi - lo):
            n = work[j] * inv
            c, close = _unsigned_code(n, gaps, scales)
            near = amax(near, close)
            out[j] = np.int32(c if n == n else top)
    if near:
        for j in range(hi - lo):
            out[j] = encode(work[j], inv, qmaps, off, size, qluts, loff)


@_jitable
def store4(codes, lo, hi, work, absmax, qmaps, off, size, qluts, loff):
    """Encode ``work[:hi - lo]`` into the nibbles of ``codes[lo // 2:]``
    (``lo`` is even; an odd last element leaves its high nibble 0), as
    ``encode`` would, on int4's first map (``off`` 0, ``signed4``) or its
    second (``linear4``)."""
    inv = inverse(absmax)
    out = codes[lo >> 1:(hi + 1) >> 1]
    pairs = (hi - lo) >> 1
    top = np.float32(size - 1)
    near = np.uint32(0)
    if off == 0:
        gaps, scales, h0, half = _SIGNED4
        for j in range(pairs):
            n0 = work[2 * j] * inv
            n1 = work[2 * j + 1] * inv
            c0, close0 = _signed_code(n0, gaps, scales, h0, half)
            c1, close1 = _signed_code(n1, gaps, scales, h0, half)
            near = amax(amax(near, close0), close1)
            out[j] = np.int32((c0 if n0 == n0 else top) + np.float32(16) * (c1 if n1 == n1 else top))
    else:
        for j in range(pairs):
            n0 = work[2 * j] * inv
            n1 = work[2 * j + 1] * inv
            c0 = _linear_code(n0)
            c1 = _linear_code(n1)
            out[j] = np.int32((c0 if n0 == n0 else top) + np.float32(16) * (c1 if n1 == n1 else top))
    if near or (hi - lo) & 1:
        for i in range(lo + 2 * pairs if not near else lo, hi, 2):
            c = encode(work[i - lo], inv, qmaps, off, size, qluts, loff)
            if i + 1 < hi:
                c = c | (encode(work[i + 1 - lo], inv, qmaps, off, size, qluts, loff) << 4)
            codes[i >> 1] = c


# --- the tables (host side, built once) ----------------------------------------------

def _dynamic(bits):
    """The magnitudes of a dynamic-exponent map with ``bits`` magnitude bits."""
    values = []
    for e in range(bits):
        k = bits - 1 - e
        values += [10.0 ** -e * (0.1 + 0.9 * (f + 1) / 2 ** k) for f in range(2 ** k)]
    return np.array(values)


def _signed(bits):
    mags = _dynamic(bits - 1)
    return np.concatenate([-mags[::-1], [0.0, 0.0], mags])


def _table(name):
    values = {"signed8": lambda: _signed(8), "unsigned8": lambda: np.concatenate([[0.0], _dynamic(8)]),
              "signed4": lambda: _signed(4),
              "linear4": lambda: np.arange(1, 17) / 16}[name]()
    return np.sort(values.astype(np.float32))


def _midpoints(table):
    """Where rounding moves from one code to the next. On a map starting at 0
    (the unsigned 8-bit one, for second moments), every positive value takes
    at least the smallest positive code: a second moment rounded to 0 under a
    nonzero first moment makes the step ``lr * m / eps`` (steps of order 1
    where float32 state took 1e-3 were measured on the digits MLP)."""
    mids = ((table[:-1].astype(np.float64) + table[1:]) / 2).astype(np.float32)
    if table[0] == 0:
        mids[0] = 0
    return np.concatenate([mids, [np.inf]]).astype(np.float32)


def _lut(table, mids):
    """For each upper-16-bit key, the code of the lowest float32 with that key."""
    keys = np.arange(65536, dtype=np.uint32)
    negative = keys >= 0x8000
    low = np.where(negative, (keys << 16) | 0xFFFF, keys << 16).astype(np.uint32).view(np.float32)
    low = np.where(np.isnan(low) & negative, -np.inf, low)  # the -inf range holds NaN payloads
    codes = np.searchsorted(mids[:-1], low, side="left")
    high = np.where(negative, keys << 16, (keys << 16) | 0xFFFF).astype(np.uint32).view(np.float32)
    finite = ~np.isnan(low) & ~np.isnan(high)
    spread = np.searchsorted(mids[:-1], high[finite], side="left") - codes[finite]
    if spread.max() > 1:
        raise AssertionError("a range of floats holds two midpoints: the look-up needs more bits")
    return codes.astype(np.uint8)


MAPS = {name: _table(name) for names in MAP_NAMES.values() for name in names}
MIDPOINTS = {name: _midpoints(t) for name, t in MAPS.items()}
LUTS = {name: _lut(MAPS[name], MIDPOINTS[name]) for name in MAPS}


def _decades(name):
    """``(gaps, scales, h0, half)`` of dynamic map ``name``, for encoding by
    arithmetic: the midpoints between its decades (+inf past the last), the
    decades' scales ``10**(m - 1 - K)``, the midpoint between 0 and the
    smallest positive value (signed maps), and the code of the lower zero
    (signed maps: the codes below it are the negative values)."""
    table, mids = MAPS[name], MIDPOINTS[name]
    signed = bool(table[0] < 0)
    m = int(np.log2(table.size)) - signed
    half = 2 ** m - 1
    base = half + 1 if signed else 0  # the midpoint above the (upper) zero
    gaps = tuple(mids[base + 2 ** k - 1] if k < m else _INF32 for k in range(1, 8))
    scales = tuple(np.float32(10.0 ** (m - 1 - k)) if k < m else _ONE for k in range(8))
    return gaps, scales, mids[base], np.float32(half)


# Numba compiles these tuples in as constants.
_SIGNED8, _UNSIGNED8, _SIGNED4 = (_decades(name) for name in ("signed8", "unsigned8", "signed4"))


def tables(kind):
    """``(qmaps, qluts)`` for ``kind`` ("int8" or "int4"): the kernel arguments."""
    first, second = MAP_NAMES[kind]
    qmaps = np.concatenate([MAPS[first], MIDPOINTS[first], MAPS[second], MIDPOINTS[second]])
    return qmaps.astype(np.float32), np.concatenate([LUTS[first], LUTS[second]])


def layout(kind):
    """``(size, offset of the signed map, of the unsigned map, lut offset of
    each)``. ``store8`` and ``store4`` take offset 0 for the kind's signed
    map (``signed8``, ``signed4``) and any other for its second map."""
    size = 256 if kind == "int8" else 16
    return size, 0, 2 * size, 0, 65536
