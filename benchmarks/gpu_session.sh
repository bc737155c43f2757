#!/usr/bin/env bash
# Every GPU check and measurement of one lent-GPU session, in one call, each stage time-boxed so that what
# finished comes back even if a later stage runs out of time. Needs the device kit (benchmarks/device_kit.py
# build) in .kit/. Run from the repository root on the GPU machine:
#
#     OUT=/some/dir DEADLINE=540 bash benchmarks/gpu_session.sh
#     STAGES="retrain check-search" RETRAIN_CONFIG=results/reference/best_config.yaml bash benchmarks/gpu_session.sh
#
# Stages: install the kit; the GPU tests (tests/test_gpu.py, tests/test_packing.py on the real GPU);
# bench_models.py --device cuda; bench_packing.py (resnet and vgg run configs, 1/2/4/8 trials on one GPU);
# the smoke search packed 4 per GPU; the reference search with --gpus-per-trial auto under a time budget;
# its best config retrained with 3 seeds at once. Outputs in $OUT: session.log, stages.jsonl (rc and
# seconds of each stage), packing.json, env.txt, results.tgz (search folders without checkpoints, retrain
# metrics) and the retrained seeds' weights as fp16 model files.
set -u
OUT=${OUT:-/tmp/fer-tune-out}
DEADLINE=${DEADLINE:-540}        # seconds from the start; stages that would end later are cut or skipped
SEARCH_BUDGET=${SEARCH_BUDGET:-150}
CHECK_BUDGET=${CHECK_BUDGET:-60}
STAGES=${STAGES:-"gpu-tests bench-models bench-packing smoke-search reference-search retrain report"}
RETRAIN_CONFIG=${RETRAIN_CONFIG:-/tmp/results/reference/best_config.yaml}
mkdir -p "$OUT" /tmp/results
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$(date +%s)
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=/tmp/site:$PWD
RES=/tmp/results
DATA=/tmp/fer2013.csv

stage() {  # stage NAME LIMIT_S COMMAND...: run it under the smaller of LIMIT_S and what is left
  local name=$1 limit=$2 left s rc
  shift 2
  case " $STAGES kit " in *" $name "*) ;; *) return ;; esac
  left=$((DEADLINE - ($(date +%s) - T0)))
  if [ "$left" -lt 25 ]; then
    echo "== $name: skipped, ${left}s left"
    echo "{\"stage\": \"$name\", \"skipped\": true}" >>"$OUT/stages.jsonl"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s) at $(date -u +%T)"
  s=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  echo "== $name: rc $rc in $(($(date +%s) - s)) s"
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - s)), \"limit\": $limit}" >>"$OUT/stages.jsonl"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  free -g | head -2
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stage kit 90 python3 benchmarks/device_kit.py unpack --kit .kit --target /tmp/site --data-out "$DATA"
python3 -c "import ray, optuna; print('ray', ray.__version__, 'optuna', optuna.__version__)" | tee -a "$OUT/env.txt"

stage gpu-tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_packing.py -m "not ray"
stage bench-models 60 python3 benchmarks/bench_models.py --device cuda --batch 128
stage bench-packing 100 python3 benchmarks/bench_packing.py --seconds 3 --json "$OUT/packing.json"
stage smoke-search 120 python3 -m fer_tune.cli --space smoke --data "$DATA" --gpus 1 --gpus-per-trial 0.25 \
  --results "$RES" --name smoke-gpu
# Limits: the budget, plus Ray's start and the packing probe (about 30 s a family on the H200), plus the end.
stage reference-search $((SEARCH_BUDGET + 180)) python3 -m fer_tune.cli --space reference --data "$DATA" --gpus 1 \
  --gpus-per-trial auto --time-budget "${SEARCH_BUDGET}s" --results "$RES" --name reference
if [ -f "$RETRAIN_CONFIG" ]; then
  # Fixed epochs (the config's train.epochs), Training only; the three seeds share the GPU.
  left=$((DEADLINE - ($(date +%s) - T0) - 20))
  stage retrain "$left" python3 -m fer_tune.cli retrain "$RETRAIN_CONFIG" --data "$DATA" \
    --seeds 3 --jobs 3 --device cuda --out "$RES/reference/final"
fi
stage report 40 python3 -m fer_tune.cli report "$RES/reference"
# A short search with everything on (auto packing, Optuna, ASHA, a time budget that cuts trials).
stage check-search $((CHECK_BUDGET + 180)) python3 -m fer_tune.cli --space reference --data "$DATA" --gpus 1 \
  --gpus-per-trial auto --time-budget "${CHECK_BUDGET:-60}s" --num-samples 8 --results "$RES" --name check

# Weights as fp16 (under the 16 MB a file may be), the rest of the evidence as one archive.
python3 - "$RES" "$OUT" <<'PY'
import sys
from pathlib import Path

import torch

res, out = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(res.glob("reference/final/seed_*/model.pt")):
    obj = torch.load(f, map_location="cpu", weights_only=True)
    obj["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    obj["weights_dtype"] = "float16"
    torch.save(obj, out / f"{f.parent.name}.model.pt")
    print(f, "->", out / f"{f.parent.name}.model.pt")
PY
tar -czf "$OUT/results.tgz" -C "$RES" --exclude='checkpoint_*' --exclude='checkpoint.pt' --exclude='model.pt' .
ls -la "$OUT"
echo "== done in $(($(date +%s) - T0)) s"
