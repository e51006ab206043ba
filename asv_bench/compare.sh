#!/usr/bin/env bash
# Regression gate: benchmark two commits with asv; fail if anything got worse.
#
#   asv_bench/compare.sh BASE HEAD        (any git names: main, a branch, a hash)
#
# Environment:
#   FACTOR         how much worse counts as a regression (default 1.10, i.e. 10 %)
#   BENCH          asv --bench regex choosing the benchmarks (default: all of them);
#                  it may name parameters, e.g. "Functional.time_step\('adam', 'float32'"
#   ROUNDS         rounds per commit, interleaved BASE HEAD HEAD BASE ... (default 10),
#                  so that a drift in the machine's load hits both commits alike
#   ASV_RUN_ARGS   extra arguments for `asv run`, split on spaces (e.g. "-e")
#   MACHINE        asv machine name, if the results hold several
#   IGNORE         regex of benchmarks shown but not judged (default: the GB/s and
#                  % of roofline tracks, each one self-timed number with no samples
#                  for a significance test, too noisy on a shared machine to gate
#                  on; the time_ benchmarks measure the same steps); IGNORE= judges all
#
# Both commits are built into asv's own virtualenv (asv.conf.json); their
# results stay in results/ (and show in `asv publish`). `asv compare` then
# marks each result, counting only statistically significant changes, and
# this script reads its marks, since asv itself exits 0 either way:
#   "+" worse, "!" newly failing          -> regression
#   "-" on a higher-is-better benchmark   -> regression (GB/s or % of roofline fell)
#
# Exit status: 0 nothing worse; 1 something worse; 2 usage or asv error.
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # (for the usage, after the cd)
cd "$(dirname "$0")"

if [ $# -ne 2 ]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$script" >&2
    exit 2
fi

factor="${FACTOR:-1.10}"
bench="${BENCH:-}"
# Benchmarks whose value should go up (track_* in bench_bandwidth.py).
higher_is_better='\.track_(gbps|roofline_pct)\b'
ignore="${IGNORE-$higher_is_better}"

base=$(git -C .. rev-parse --verify --quiet "$1^{commit}") || { echo "compare.sh: unknown commit '$1'" >&2; exit 2; }
head=$(git -C .. rev-parse --verify --quiet "$2^{commit}") || { echo "compare.sh: unknown commit '$2'" >&2; exit 2; }
if [ "$base" = "$head" ]; then
    echo "compare.sh: '$1' and '$2' are the same commit (${base:0:8})" >&2
    exit 2
fi

asv=(python3 -m asv)
# asv asks about the machine on its first run; take its defaults.
[ -f "$HOME/.asv-machine.json" ] || "${asv[@]}" machine --yes >/dev/null

run_args=(--show-stderr --interleave-rounds -a "rounds=${ROUNDS:-10}")
[ -n "$bench" ] && run_args+=(--bench "$bench")
# shellcheck disable=SC2206  # split on purpose
[ -n "${ASV_RUN_ARGS:-}" ] && run_args+=(${ASV_RUN_ARGS})

echo "compare.sh: benchmarking ${base:0:8} ($1) against ${head:0:8} ($2), factor $factor${bench:+, --bench '$bench'}"
set +e
printf '%s\n%s\n' "$base" "$head" | "${asv[@]}" run "${run_args[@]}" HASHFILE:-
rc=$?
set -e
# 2 means some benchmark failed: the comparison below shows which, and a
# failure that is new in HEAD counts as a regression there.
if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
    echo "compare.sh: asv run failed (exit $rc)" >&2
    exit 2
fi

compare_args=(--factor "$factor" --split)
[ -n "${MACHINE:-}" ] && compare_args+=(--machine "$MACHINE")
table=$("${asv[@]}" compare "${compare_args[@]}" "$base" "$head") \
    || { echo "compare.sh: asv compare failed" >&2; exit 2; }

# Print the rows of the benchmarks selected now, and judge them. (The
# results may also hold other benchmarks and parameters of these commits,
# from earlier runs, or skipped ones: those rows are left out. asv matches
# BENCH against "name(param, ...)", which is how compare prints them.)
judge='
import os, re, sys

bench = os.environ["BENCH"]
higher = re.compile(os.environ["HIGHER"])
ignore = os.environ["IGNORE"]
worse, pending = [], []
for line in os.environ["TABLE"].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 5 or not cells[4].startswith("bench_"):
        if not line.strip() and pending and pending[-1].startswith("|"):
            pending = []  # a table none of whose rows was kept: drop its title
        pending.append(line)  # titles, headers, blank lines: shown with a kept row
        continue
    mark, before, after, ratio, name = cells
    if (bench and not re.search(bench, name)) or before == after == "n/a":
        continue
    print("\n".join(pending + [line]))
    pending = []
    if ignore and re.search(ignore, name):
        continue
    if mark == "!" or (mark in ("+", "-") and (mark == "+") != bool(higher.search(name))):
        worse.append(f"  {mark} {ratio:>6}  {before} -> {after}  {name}")
factor = os.environ["FACTOR"]
if worse:
    print(f"\ncompare.sh: FAIL: {len(worse)} benchmark(s) worse by more than a factor {factor}:")
    print("\n".join(worse))
    sys.exit(1)
print(f"\ncompare.sh: OK: no benchmark worse by more than a factor {factor}")
'
TABLE="$table" BENCH="$bench" HIGHER="$higher_is_better" IGNORE="$ignore" FACTOR="$factor" \
    python3 -c "$judge"
