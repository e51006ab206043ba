"""Compiled update kernels: plain 1-D arrays and scalars in, arrays updated in place.

The kernels know nothing of optimizers, groups or state dicts. Every array
argument is a C-contiguous 1-D view; every scalar argument already has the
array's dtype (computed on the host in float64, then cast), so float32 loops
stay float32.

``rules.py`` states each update rule once, per element; ``cpu.py`` (serial
and parallel loops) and ``cuda.py`` (grid-stride GPU loops, imported only
when CUDA is used) compile the same rules. ``roofline.py`` holds the CPU
speed-limit kernels; their GPU counterparts are in ``cuda.py``.
"""
