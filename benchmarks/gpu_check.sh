#!/usr/bin/env bash
# The GPU check of benchmarks/RESULTS.md, as one script for a lent GPU machine (a few
# minutes on an H100; the tables come last). Needs .gpu/ from benchmarks/gpu_prepare.sh.
#   1. installs the carried wheels and builds learn2learn 0.2.0 into /tmp/site;
#   2. maml_speed.py on speech-full at meta-batch 32, second-order MAML: metavox's vmap
#      strategy ($IMPLS: float32 and bf16 autocast) in chunks of each of $CHUNKS tasks,
#      against learn2learn, after the float64 gradient check (SPEED_S seconds each);
#   3. precision_accuracy.py: protocol 2 (FSDD, fold george) trained and adapted in
#      float32 and in bf16, accuracy over $EPISODES episodes per cell.
# Set DRY=1 to run the same steps on the CPU with tiny settings (no install).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/metavox-gpu}"; mkdir -p "$OUT"
TOTAL="${TOTAL:-540}"  # seconds for the whole script: the accuracy check gets what is left
CHUNKS="${CHUNKS:-8}"; IMPLS="${IMPLS:-metavox-vmap metavox-vmap-bf16}"; SPEED_S="${SPEED_S:-330}"; EPISODES="${EPISODES:-100}"; REPEATS="${REPEATS:-2}"
if [[ -n "${DRY:-}" ]]; then
  DEVICE=cpu; SPEED=(--workload speech-small --meta-batch 2 --steps 1 --warmup 1 --repeats 1
                     --check-tasks 1 --matmul-n 512 --threads 1)
  ACC=(--quick --data ../shared/data/fsdd)
else
  DEVICE=cuda; SPEED=(--workload speech-full --meta-batch 32 --steps 3 --warmup 2
                      --repeats "$REPEATS")
  ACC=(--data .gpu/fsdd --episodes "$EPISODES")
  nvidia-smi -L
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .gpu/wheels/*.whl || exit 1
  python3 --version; (gcc --version || cc --version) 2>&1 | head -1
  if python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
      .gpu/learn2learn-0.2.0; then
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  else  # no compiler or headers: MAML is pure Python, import it from the source tree
    echo "learn2learn's C did not build: its data-loading modules are stubbed (_anchors.py)"
    export METAVOX_L2L_SOURCE_TREE=1
    export PYTHONPATH="$PWD/.gpu/learn2learn-0.2.0:/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONUNBUFFERED=1
for chunk in $CHUNKS; do  # tasks per vmapped call: fewer, less memory
  timeout "$SPEED_S" python3 benchmarks/maml_speed.py --device "$DEVICE" --algo maml2 \
    --chunk "$chunk" --impl $IMPLS learn2learn "${SPEED[@]}" 2>&1 | tee "$OUT/speed-$chunk.txt"
done
timeout $((TOTAL - SECONDS > 60 ? TOTAL - SECONDS : 60)) python3 benchmarks/precision_accuracy.py --device "$DEVICE" \
  --out "$OUT/precision-runs" "${ACC[@]}" 2>&1 | grep -v "^\s*$" | tee "$OUT/precision.txt"
rm -rf "$OUT/precision-runs"
for chunk in $CHUNKS; do
  echo; echo "== speed (second-order MAML), vmap chunks of $chunk tasks =="
  sed -n '/^| algorithm/,$p' "$OUT/speed-$chunk.txt"
done
echo; echo "== accuracy, float32 against bf16 =="; sed -n '/^| trained/,$p' "$OUT/precision.txt"
