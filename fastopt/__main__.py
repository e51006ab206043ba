"""``python -m fastopt bench [...]``, ``python -m fastopt warmup``."""

import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "measure speed on this machine (see 'bench --help')",
                "warmup": "compile the CPU kernels into numba's on-disk cache"}
    if not argv or argv[0] not in commands:
        from . import __version__
        parser = argparse.ArgumentParser(prog="python -m fastopt")
        parser.add_argument("--version", action="version", version=f"fastopt {__version__}")
        parser.add_argument("command", choices=list(commands),
                            help="; ".join(f"{k}: {v}" for k, v in commands.items()))
        parser.parse_args(argv[:1])
    if argv[0] == "bench":
        from .bench import main as bench_main
        return bench_main(argv[1:])
    argparse.ArgumentParser(prog="python -m fastopt warmup",
                            description=commands["warmup"] + " (takes no arguments)"
                            ).parse_args(argv[1:])
    from ._warmup import warmup
    n = warmup()
    print(f"compiled {n} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
