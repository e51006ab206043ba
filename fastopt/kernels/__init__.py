"""Compiled update kernels: plain 1-D arrays and scalars in, arrays updated in place.

The kernels know nothing of optimizers, groups or state dicts. Every array
argument is a C-contiguous 1-D view; every scalar argument already has the
array's dtype (computed on the host in float64, then cast), so float32 loops
stay float32.
"""
