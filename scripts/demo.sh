#!/usr/bin/env bash
# The main job on the embedded demo data (`make demo`): 1,797 handwritten digits
# -> JPEG folder -> TFRecords (tfconvnets.dataprep) -> 2-process Horovod training through
# the DALI CPU pipeline -> evaluation -> SavedModel export -> predictions -> a plot.
# The same code path as a DGX run, only smaller. Tunables: DEMO_DIR, DEMO_EPOCHS, DEMO_NP, and
# DEMO_FLAGS (more training flags, e.g. DEMO_FLAGS="--ema_decay=0.99").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT="${DEMO_DIR:-demo_out}"
EPOCHS="${DEMO_EPOCHS:-6}"
NP="${DEMO_NP:-2}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" HOROVOD_GLOO_IFACE="${HOROVOD_GLOO_IFACE:-lo}"
start=$(date +%s)
phase_start=$start
phases=""
phase_done() {  # the time of the phase that just ended, for the summary line
  local now; now=$(date +%s)
  phases+="${phases:+, }$1 $((now - phase_start)) s"
  phase_start=$now
}

rm -rf "$OUT" && mkdir -p "$OUT"
echo "==> [demo] 1/5 writing the digits as an ImageNet-style JPEG folder"
$PY -m tfconvnets.demo_data --output_dir="$OUT/jpeg"
phase_done "digits"

echo "==> [demo] 2/5 converting it to TFRecords with tfconvnets.dataprep"
$PY -m tfconvnets.dataprep --input_dir="$OUT/jpeg" --output_dir="$OUT/tfrecords" \
  --num_shards_train=2 --num_shards_val=2 --workers=2
phase_done "dataprep"

echo "==> [demo] 3/5 training resnet50: horovodrun -np $NP, DALI on the CPU, evaluating each epoch"
# The recipe scaled to 32x32 digits: global batch 32 (LR 0.256 x 32/256), 1 warmup epoch,
# mild crops (digits do not survive 8%-area crops) and no flips (digits are not mirror-symmetric).
.venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo $PY main.py \
  --mode=train_and_evaluate --arch=resnet50 \
  --data_dir="$OUT/tfrecords" --data_backend=dali --dali_device=cpu \
  --model_dir="$OUT/model" --export_dir="$OUT/export" \
  --image_size=32 --num_classes=10 --batch_size=$((32 / NP)) \
  --num_iter="$EPOCHS" --iter_unit=epoch --lr_warmup_epochs=1 --weight_decay=5e-5 \
  --crop_area_min=0.5 --norandom_flip --zero_init_last_bn --display_every=15 --num_threads=1 \
  ${DEMO_FLAGS:-}
phase_done "training+evaluation+export"

echo "==> [demo] 4/5 predicting a few held-out digits with --mode=predict"
mkdir -p "$OUT/to_predict"
for digit in 0 3 5 8; do cp "$(ls "$OUT"/jpeg/validation/$digit/*.JPEG | head -1)" "$OUT/to_predict/true_${digit}.JPEG"; done
$PY main.py --mode=predict --arch=resnet50 --model_dir="$OUT/model" --data_dir="$OUT/tfrecords" \
  --image_size=32 --num_classes=10 --to_predict="$OUT/to_predict" --results_dir="$OUT/predict" 2>/dev/null
phase_done "predict"

echo "==> [demo] 5/5 plotting the run"
plot=$($PY -m tfconvnets.plot "$OUT/model/log.json")
phase_done "plot"

top1=$($PY - "$OUT/model/log.json" <<'PY'
import sys
from tfconvnets.dllogger import read_log
final = [r["data"] for r in read_log(sys.argv[1]) if r["step"] == [] and "top1_accuracy" in r["data"]]
print(f"{final[-1]['top1_accuracy']:.4f}")
PY
)
echo
echo "demo finished in $(( $(date +%s) - start )) s ($phases)"
echo "held-out top-1:  $top1 (360 digits never trained on)"
echo "SavedModel:      $OUT/export"
echo "plot:            $plot"
echo "DLLogger log:    $OUT/model/log.json   TensorBoard: $OUT/model/tensorboard"
