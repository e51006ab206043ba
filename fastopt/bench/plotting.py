"""``--plot``: throughput against size, beside the same-traffic roofline."""

from .cases import VARIANTS, roofline_bytes


def plot(rows, path):
    """Throughput against size, one panel per dtype, each optimizer in its own
    colour with its same-traffic roofline dashed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastopt[plot]'") from None
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.5), squeeze=False,
                             sharey=True)
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, dtype in zip(axes[0], dtypes):
        for variant in VARIANTS:
            rs = sorted((r for r in rows if r["optimizer"] == variant and r["dtype"] == dtype),
                        key=lambda r: r["n"])
            if not rs:
                continue
            n = [r["n"] for r in rs]
            ax.plot(n, [r["gbps"] for r in rs], "o-", color=colours[variant], label=variant)
            roof = [roofline_bytes(variant, r["n"], dtype) / r["roofline_ms"] / 1e6 for r in rs]
            ax.plot(n, roof, "--", color=colours[variant], alpha=0.45)
            doubted = [r for r in rs if "gbps" in r.get("suspect", ())]
            if doubted:  # hollow markers over the points a noise check doubts
                ax.plot([r["n"] for r in doubted], [r["gbps"] for r in doubted], "o",
                        mfc="white", color=colours[variant])
        ax.set_xscale("log")
        ax.set_xlabel("elements")
        ax.set_title(f"{dtype}: fastopt (solid) and same-traffic roofline (dashed)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("GB/s moved per step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
