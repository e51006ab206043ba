"""fastopt's asv benchmark suite: see README.md, "Benchmarks (asv)"."""
