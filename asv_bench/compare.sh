#!/usr/bin/env bash
# Regression gate: benchmark two commits with asv; fail if anything got worse.
#
#   asv_bench/compare.sh BASE HEAD        (any git names: main, a branch, a hash)
#
# Environment:
#   FACTOR         how much worse counts as a regression (default 1.10, i.e. 10 %)
#   BENCH          asv --bench regex choosing the benchmarks (default: all of them);
#                  it may name parameters, e.g. "Functional.time_step\('adam', 'float32'"
#   ASV_RUN_ARGS   extra arguments for `asv run`, split on spaces
#                  (e.g. "-a repeat=20" for more samples, or "-e")
#   MACHINE        asv machine name, if the results hold several
#
# Both commits are built into asv's own virtualenv (asv.conf.json) and run
# with interleaved rounds, so a drift in the machine's load hits both alike.
# `asv compare` then marks each result (statistically significant changes
# only) and this script reads its marks, since asv itself exits 0 either way:
#   "+" worse, "!" newly failing          -> regression
#   "-" on a higher-is-better benchmark   -> regression (GB/s, % of roofline fell)
#
# Exit status: 0 nothing worse; 1 something worse; 2 usage or asv error.
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -ne 2 ]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

factor="${FACTOR:-1.10}"
bench="${BENCH:-}"
# Benchmarks whose value should go up (track_* in bench_bandwidth.py).
higher_is_better='\.track_(gbps|roofline_pct)\b'

base=$(git -C .. rev-parse --verify --quiet "$1^{commit}") || { echo "compare.sh: unknown commit '$1'" >&2; exit 2; }
head=$(git -C .. rev-parse --verify --quiet "$2^{commit}") || { echo "compare.sh: unknown commit '$2'" >&2; exit 2; }
if [ "$base" = "$head" ]; then
    echo "compare.sh: '$1' and '$2' are the same commit (${base:0:8})" >&2
    exit 2
fi

# asv asks about the machine on its first run; take its defaults.
[ -f "${ASV_MACHINE_FILE:-$HOME/.asv-machine.json}" ] || asv machine --yes >/dev/null

run_args=(--show-stderr)
[ -n "$bench" ] && run_args+=(--bench "$bench")
# shellcheck disable=SC2206  # split on purpose
[ -n "${ASV_RUN_ARGS:-}" ] && run_args+=(${ASV_RUN_ARGS})

echo "compare.sh: benchmarking ${base:0:8} ($1) against ${head:0:8} ($2), factor $factor${bench:+, --bench '$bench'}"
set +e
printf '%s\n%s\n' "$base" "$head" | asv run "${run_args[@]}" HASHFILE:-
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
table=$(asv compare "${compare_args[@]}" "$base" "$head") || { echo "compare.sh: asv compare failed" >&2; exit 2; }
echo "$table"

# The results folder may hold other benchmarks of these commits from earlier
# runs: judge only those selected now (asv matches BENCH against
# "name(param, ...)", as compare prints them).
TABLE="$table" BENCH="$bench" HIGHER="$higher_is_better" FACTOR="$factor" python3 - <<'EOF'
import os, re, sys

bench = os.environ["BENCH"]
higher = re.compile(os.environ["HIGHER"])
worse = []
for line in os.environ["TABLE"].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 5 or cells[0] not in ("+", "-", "!"):
        continue
    mark, before, after, ratio, name = cells
    if bench and not re.search(bench, name):
        continue
    if mark == "!" or (mark == "+") != bool(higher.search(name)):
        worse.append(f"  {mark} {ratio:>6}  {before} -> {after}  {name}")
factor = os.environ["FACTOR"]
if worse:
    print(f"\ncompare.sh: FAIL: {len(worse)} benchmark(s) worse by more than a factor {factor}:")
    print("\n".join(worse))
    sys.exit(1)
print(f"\ncompare.sh: OK: no benchmark worse by more than a factor {factor}")
EOF
