"""The bench's text report, and the summary of its noise checks for the report and the JSON.

A figure that failed a check in ``noise`` is printed with a "?" and its row
is named, with the reason, under its table: nothing impossible is printed
without a warning.
"""

from .noise import busy

COLUMNS = [("optimizer", "optimizer", "{}"), ("n", "n", "{:.0e}"), ("dtype", "dtype", "{}"),
           ("target", "target", "{}"), ("fastopt_ms", "ms/step", "{:.3f}"),
           ("gbps", "GB/s", "{:.1f}"), ("state_bytes", "state B/param", "{:.2f}"),
           ("roofline_pct", "% roofline", "{:.0f}%"),
           ("numpy_ms", "NumPy ms", "{:.3f}"), ("speedup_numpy", "vs NumPy", "{:.1f}x"),
           ("torch_ms", "torch ms", "{:.3f}"), ("speedup_torch", "vs torch", "{:.2f}x"),
           ("flags", "check", ",".join)]
CUDA_COLUMNS = COLUMNS[:8] + [("torch_ms", "torch fused ms", "{:.3f}"),
                               ("speedup_torch", "vs torch", "{:.2f}x"), COLUMNS[-1]]
BNB_COLUMNS = [COLUMNS[0], COLUMNS[1], COLUMNS[2], ("fastopt_ms", "fastopt ms", "{:.3f}"),
               ("bnb_ms", "bitsandbytes ms", "{:.3f}"), ("speedup_bnb", "vs bitsandbytes", "{:.1f}x")]
# (a doubted figure ends in "?" here too; the reasons are under the main table)
THRESHOLD_COLUMNS = [("n", "n", "{}"), ("serial_us", "serial", "{:.1f}"),
                     ("parallel_us", "parallel", "{:.1f}"), COLUMNS[-1]]
MARK = "?"


def _cell(row, key, fmt):
    value = row.get(key)
    if value is None:
        return "-" if key != "flags" else "ok"
    text = fmt(value) if callable(fmt) else fmt.format(value)
    return text + MARK if key in row.get("suspect", ()) else text


def format_table(rows, columns):
    """Right-aligned text table; missing values print as '-', doubted ones end in '?'."""
    cells = [[head for _, head, _ in columns]]
    cells += [[_cell(r, key, fmt) for key, _, fmt in columns] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def label(row):
    """A row's name in warnings: its optimizer, size and dtype (those it has)."""
    parts = [row.get("optimizer"), f"n={row['n']:,}" if "n" in row else None, row.get("dtype")]
    if "tensors" in row:
        parts[1] = f"{row['tensors']:,} tensors of {row['size']:,}"
    return " ".join(p for p in parts if p)


def noise_summary(results):
    """``{"load_before", "load_after", "cores", "busy", "warnings"}``: every failed check, named.

    ``busy`` is the warning about the machine's load, or None; ``warnings``
    starts with it and goes on with each doubted row's reasons.
    """
    noise = dict(results.get("noise") or {})
    rows = (results["cuda_rows"] + results["rows"] + [results["many"], results["guards"]]
            + (results["threshold"]["rows"] if results["threshold"] else []))
    warnings = [f"{label(r)}: {w}" for r in rows if r for w in r.get("warnings", ())]
    th = results["threshold"]
    if th and th["crossover"] is None:
        warnings.append(f"threshold: the parallel step did not win at the largest size measured "
                        f"(n={th['rows'][-1]['n']:,}), so there is no crossover in this run")
    cores = (results.get("machine") or {}).get("cores")
    machine = busy(noise.get("load_before"), noise.get("load_after"), cores)
    noise.update(cores=cores, busy=machine, warnings=([machine] if machine else []) + warnings)
    return noise


def _warnings(rows):
    out = [f"  {label(r)}: {w}" for r in rows if r for w in r.get("warnings", ())]
    return ([f"Figures marked {MARK} failed a plausibility check; don't quote them:"] + out
            if out else [])


def _crossover(th, threshold):
    if th["crossover"] is None:
        return (f"parallel did not win at the largest size here (n = {th['rows'][-1]['n']:,}): "
                f"no crossover in this run (fastopt.config.PARALLEL_THRESHOLD is {threshold})")
    return (f"parallel wins from n = {th['crossover']:,} on "
            f"(fastopt.config.PARALLEL_THRESHOLD is {threshold})")


def _bitsandbytes(results):
    """The lines on bitsandbytes' 8-bit AdamW: its rows beside fastopt's adam-int8, or why
    there are none (nothing when no row had it as contender)."""
    info = results.get("bitsandbytes")
    if not info:
        return []
    head = "bitsandbytes AdamW8bit (CPU)"
    if info["skipped"]:
        return ["", f"{head}: skipped ({info['skipped']})"]
    rows = [r for r in results["rows"] if r.get("bnb_ms") is not None]
    title = (f"{head} {info['version']}, weight decay 0 (Adam's rule), child process, "
             "against fastopt's adam-int8:")
    return ["", title, format_table(rows, BNB_COLUMNS)]


def report(results):
    """The text report of a ``run``'s results."""
    m, noise = results["machine"], results.get("noise") or {}
    lines = []
    if noise.get("busy"):
        lines += ["WARNING: " + noise["busy"], ""]
    if results["gpu"]:
        gpu = results["gpu"]
        lines += [f"fastopt bench on {gpu['gpu']} (compute capability {gpu['compute_capability']})",
                  "Medians of back-to-back steps; roofline = same-traffic in-place CUDA kernel; "
                  "torch = torch.optim fused=True on CUDA.", "",
                  format_table(results["cuda_rows"], CUDA_COLUMNS)] + _warnings(results["cuda_rows"])
        lines.append("")
    if not any(results[key] for key in ("rows", "many", "guards", "threshold", "startup")):
        return "\n".join(lines)
    load = "" if noise.get("load_before") is None else (
        f"; load average {noise['load_before']:.1f} before, {noise['load_after']:.1f} after")
    lines += [f"fastopt bench: {m['processor']}, {m['cores']} cores, {m['numba_threads']} numba threads "
              f"({m['threading_layer']}), numpy {m['numpy']}, numba {m['numba']}"
              + (f", torch {results['torch_version']}" if results.get("torch_version") else "") + load,
              "Medians. roofline: same-traffic in-place kernel, same target, same run. "
              + ("torch: fused=True, child process. " if results.get("torch_version")
                 else "torch: not measured (not installed, not importable, or --no-torch). ")
              + "Ratios: medians of per-round ratios (vs NumPy: of the medians, NumPy timed "
              "after the others)."]
    if results["rows"]:
        lines += ["", format_table(results["rows"], COLUMNS)] + _warnings(results["rows"])
        lines += _bitsandbytes(results)
    many = results["many"]
    if many:
        pct = _cell(many, "roofline_pct", "{:.0f}%")
        lines += ["", f"Adam over {many['tensors']:,} tensors of {many['size']:,} {many['dtype']} "
                      f"({many['tensors'] * many['size']:.0e} elements):",
                  f"  fastopt FlatParams (one call)   {_cell(many, 'flat_ms', '{:8.3f}')} ms   "
                  f"{pct} of roofline ({many['roofline_ms']:.3f} ms)",
                  f"  fastopt, one array per tensor   {_cell(many, 'separate_ms', '{:8.3f}')} ms"]
        if many.get("torch_ms") is not None:
            lines.append(f"  torch fused, {many['tensors']:,} tensors        "
                         f"{_cell(many, 'torch_ms', '{:8.3f}')} ms   (FlatParams is "
                         f"{_cell(many, 'speedup_torch', '{:.1f}x')} faster)")
        lines += _warnings([many])
    gd = results["guards"]
    if gd:
        lines += ["", f"Adam step at n={gd['n']:.0e} {gd['dtype']}: {_cell(gd, 'plain_ms', '{:.3f}')} ms; "
                      f"with check_finite {_cell(gd, 'check_finite_ms', '{:.3f}')} ms "
                      f"({_cell(gd, 'check_finite_cost_pct', '{:+.0f}%')}); with check_finite and "
                      f"grad_scale {_cell(gd, 'check_finite_scaled_ms', '{:.3f}')} ms"]
        lines += _warnings([gd])
    th = results["threshold"]
    if th:
        lines += ["", f"Serial vs parallel Adam step ({th['dtype']}), microseconds:",
                  format_table(th["rows"], THRESHOLD_COLUMNS), _crossover(th, m["parallel_threshold"])]
        lines += _warnings(th["rows"])
    st = results["startup"]
    if st:
        lines += ["", f"Fresh process: import fastopt {st['import_ms']:.0f} ms, "
                      f"first Adam step (kernels from the disk cache) {st['first_step_ms']:.0f} ms"]
    return "\n".join(lines)
