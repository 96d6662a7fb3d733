#!/usr/bin/env bash
# Two lmforge binaries against each other (a change against the code before it): for each
# preset, PAIRS alternating runs of `A bench train --preset P --json` and the same with B
# (which goes first alternates, so neither always gets the warmer machine), then a table of
# median tokens/s and peak RSS of each and the median and range of the per-pair ratios B / A.
# Pairs, not two series: shared machines drift by ±20% within minutes.
#
# usage: scripts/bench-ab.sh A_BINARY B_BINARY [PAIRS] [PRESET[:BATCH] ...]
#        (default: 5 pairs of bench-gpt bench-llama; e.g. quickstart:16 for the quickstart model)
# env:   STEPS (timed steps per run, default 10)
set -euo pipefail
A=$1
B=$2
PAIRS=${3:-5}
shift 3 || shift $#
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(bench-gpt bench-llama)
STEPS=${STEPS:-10}
OUT=$(mktemp -d)
for spec in "${PRESETS[@]}"; do
  preset=${spec%%:*}
  batch=8
  [ "$spec" = "$preset" ] || batch=${spec#*:}
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for who in $order; do
      bin=$A
      [ "$who" = b ] && bin=$B
      "$bin" bench train --preset "$preset" --batch "$batch" --steps "$STEPS" --json >"$OUT/$spec.$i.$who.json"
    done
    echo "$spec pair $i/$PAIRS done" >&2
  done
done
python3 - "$OUT" "$PAIRS" "${PRESETS[@]}" <<'EOF'
import json, statistics, sys
out, pairs, presets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
load = lambda p, i, who: json.load(open(f"{out}/{p}.{i}.{who}.json"))
print("| preset | A tok/s | B tok/s | B / A (median, pair range) | A peak RSS | B peak RSS | B / A |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for p in presets:
    runs = [(load(p, i, "a"), load(p, i, "b")) for i in range(1, pairs + 1)]
    at = [a["tokens_per_s"] for a, _ in runs]
    bt = [b["tokens_per_s"] for _, b in runs]
    ratios = [y / x for x, y in zip(at, bt)]
    ar = statistics.median(a["peak_rss_bytes"] for a, _ in runs)
    br = statistics.median(b["peak_rss_bytes"] for _, b in runs)
    print(f"| `{p}` | {statistics.median(at):,.0f} | {statistics.median(bt):,.0f} | "
          f"**{statistics.median(ratios):.3f}** ({min(ratios):.3f}–{max(ratios):.3f}) | "
          f"{ar / 1e6:,.1f} MB | {br / 1e6:,.1f} MB | **{br / ar:.3f}** |")
EOF
rm -rf "$OUT"
