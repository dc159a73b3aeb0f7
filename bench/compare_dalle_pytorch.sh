#!/usr/bin/env bash
# Issue 8 speed comparison: ours (bench/throughput.py, course env) against DALLE-pytorch 1.6.6
# (bench/baseline_dalle_pytorch.py, its own env; how to build it: bench/README.md).
# Runs the two alternately ROUNDS times on the same machine, then prints each round's ratios
# and their spread. Other work on the machine slows both; compare only figures from one run.
#
#   bash bench/compare_dalle_pytorch.sh [ROUNDS=2] [STEPS=10]
#   OURS_PY=.venv/bin/python BASE_PY=/work/baseline_venv/bin/python bash bench/compare_dalle_pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
STEPS=${2:-10}
OURS_PY=${OURS_PY:-.venv/bin/python}
BASE_PY=${BASE_PY:-/work/baseline_venv/bin/python}
if ! "$BASE_PY" -c "import dalle_pytorch" 2>/dev/null; then
  # dalle_pytorch/__init__ may need the stubs of bench/baseline_dalle_pytorch.py: ask the script
  if ! "$BASE_PY" -c "import sys; sys.path.insert(0, 'bench'); import baseline_dalle_pytorch as b; sys.exit(b._import_dalle_pytorch()[0] is None)"; then
    echo "no DALLE-pytorch environment at $BASE_PY (see bench/README.md); nothing to compare"; exit 0
  fi
fi
LOG=$(mktemp -d)
echo "results of each run under $LOG; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: ours ($(date -u +%H:%M:%S))"
  "$OURS_PY" -c "import sys, json; sys.path.insert(0, 'bench'); import throughput; \
r = throughput.main(['--steps', '$STEPS']); print(json.dumps(r))" | tee "$LOG/ours_$r.txt"
  echo "== round $r: DALLE-pytorch 1.6.6 ($(date -u +%H:%M:%S))"
  "$BASE_PY" bench/baseline_dalle_pytorch.py --steps "$STEPS" --json | tee "$LOG/base_$r.txt"
done
"$OURS_PY" - "$LOG" "$ROUNDS" <<'EOF'
import json, sys
log, rounds = sys.argv[1], int(sys.argv[2])
last = lambda p: json.loads([l for l in open(p) if l.startswith("{")][-1])
rows = {}
for r in range(1, rounds + 1):
    o, b = last(f"{log}/ours_{r}.txt"), last(f"{log}/base_{r}.txt")
    best = lambda d, pre, f: f(v for k, v in d.items() if k.startswith(pre))
    ratios = {
        "train: our best / its best (pairs/s)": best(o, "train", max) / best(b, "train", max),
        "train fp32: ours / its (same attention: full)": o["train_pairs_per_s_full_fp32"] / b["train_pairs_per_s_full_fp32"],
        "train fp32: our sparse / its sparse": o["train_pairs_per_s_sparse_fp32"] / b["train_pairs_per_s_sparse_fp32"],
        "train bf16: our best / its best": max(o["train_pairs_per_s_sparse_bf16"], o["train_pairs_per_s_full_bf16"])
            / max(b["train_pairs_per_s_sparse_bf16"], b["train_pairs_per_s_full_bf16"]),
        "generate 16: its fastest / our fastest (s)": best(b, "generate", min) / best(o, "generate", min),
        "generate 16: its default (fp32, no cache) / our fastest": b["generate_16_s_fp32_nocache"] / best(o, "generate", min),
        "generate 16 fp32+cache: its / ours": b["generate_16_s_fp32_cache"] / o["generate_16_s_fp32_cache"],
    }
    for k, v in ratios.items():
        rows.setdefault(k, []).append(v)
print(f"\n{'ratio (> 1: ours faster)':58s} " + " ".join(f"round {r:<3d}" for r in range(1, rounds + 1)) + "   min-max")
for k, vs in rows.items():
    print(f"{k:58s} " + " ".join(f"{v:9.2f}" for v in vs) + f"   {min(vs):.2f}-{max(vs):.2f}")
print("targets: training >= 1.5x, generating 16 images >= 5x")
EOF
