#!/usr/bin/env bash
# The GPU check (issues 18 and 31), in two steps:
#   scripts/gpu_check.sh --prepare   here (network, any CPU): builds the binary and the GPU suite
#       (tests/gpu.rs) with the GPU feature, strips and compresses both into .gpu/ (ignored by git;
#       carry it), with BCCD, Ultralytics' Python package (from the reference environment, for
#       the timings against PyTorch) and, with TEACHER=1, the BCCD teacher (22 MB: it does not fit
#       a lent machine's 64 MiB beside the rest; tests/data/yolov10n_bccd.pt stands in for it).
#       Then fetch the Vulkan loader debs into .gl/ as the device tool's README says.
#   scripts/gpu_check.sh             on the GPU machine (no network), from the repository root:
#       1. the GPU suite against the CPU, each part under its own time limit (gpu_suite.log),
#       2. timings against Ultralytics/PyTorch on the same GPU: the training step (forward, loss,
#          backward, optimizer; fp32 on both sides) and the forward (fp32 and f16, BatchNorm
#          folded, output read back on both sides),
#       3. val of the BCCD models in f32, f16 and bf16 on the GPU,
#       and prints one JSON object (also written to $OUT/gpu_check.json when $OUT is set).
# Environment: DEVICE (default wgpu), FEATURE (default wgpu), RUNS of each timing (20), PARTS
# (default "suite timings val": which of 1-3 run), BUDGET in seconds for all of them (540: each
# check's own limit is cut to what is left, so that the JSON is written inside a lent call).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-wgpu}
FEATURE=${FEATURE-wgpu}
RUNS=${RUNS:-20}
PARTS=${PARTS:-suite timings val}
BUDGET=${BUDGET:-540}
for part in $PARTS; do
    case $part in suite | timings | val) ;; *) echo "gpu_check.sh: PARTS: unknown part '$part'; accepted: suite, timings, val" >&2; exit 2 ;; esac
done
for pair in "RUNS=$RUNS" "BUDGET=$BUDGET"; do
    [[ ${pair#*=} =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: ${pair%%=*} must be a positive integer, not '${pair#*=}'" >&2; exit 2; }
done
DEADLINE=$((SECONDS + BUDGET))
# a check's limit: its own, or what is left of the budget (at least 5 s)
lim() { local left=$((DEADLINE - SECONDS)); ((left < $1)) && echo $((left > 5 ? left : 5)) || echo "$1"; }
G=.gpu

if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
    cargo build --features "$FEATURE"
    suite=$(cargo test --features "$FEATURE" --test gpu --no-run --message-format json 2> /dev/null |
        python3 -c "import json,sys; print([m['executable'] for m in map(json.loads, sys.stdin) if m.get('executable') and m['target']['name'] == 'gpu'][0])")
    rm -rf $G && mkdir -p $G/shared/fixtures $G/shared/data
    strip -o $G/yolodistill target/debug/yolodistill
    strip -o $G/gpu_suite "$suite"
    xz -T2 -6 -f $G/yolodistill $G/gpu_suite
    cp -r --no-preserve=mode ../shared/data/bccd $G/shared/data/bccd
    rm -f $G/shared/data/bccd/labels/*.cache*
    [ "${TEACHER:-0}" = 1 ] && cp --no-preserve=mode ../shared/fixtures/teacher_v8s_bccd.pt $G/shared/fixtures/
    if PY=$(../shared/tools/ref-env.sh 2> /dev/null | tail -n 1) && site=$("$PY" -c "import ultralytics, os; print(os.path.dirname(os.path.dirname(ultralytics.__file__)))"); then
        tar -C "$site" --exclude=__pycache__ -cJf $G/ultralytics.tar.xz ultralytics
    fi
    du -sh $G
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
RESULTS=$OUT/results.jsonl # written as each check ends: a run stopped at its limit still tells
: > "$RESULTS"
note() { echo "$1" >> "$RESULTS"; }

# The Vulkan loader (device README: .gl holds its debs) and NVIDIA's driver file.
if [ -d .gl ] && ! ldconfig -p | grep -q libvulkan; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $nv ] && [ -z "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ] && export VK_DRIVER_FILES=$nv
# The suite was built in /work/main with ../shared beside it: the same paths here.
if [ "$PWD" != /work/main ]; then
    [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
fi
[ -e /work/shared ] || ln -s "$PWD/$G/shared" /work/shared
mkdir -p target/debug
for b in yolodistill gpu_suite; do
    [ -x $G/$b ] || { xz -dkf $G/$b.xz && chmod +x $G/$b; }
done
cp $G/yolodistill target/debug/yolodistill
BIN=$PWD/target/debug/yolodistill
export YOLODISTILL_CACHE=$W/kernel-cache
TEACHER=$PWD/$G/shared/fixtures/teacher_v8s_bccd.pt
[ -f "$TEACHER" ] || { TEACHER=$PWD/tests/data/yolov10n_bccd.pt; export YOLODISTILL_TEST_TEACHER=$TEACHER; }
DATA=$PWD/$G/shared/data/bccd/data.yaml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
# the host, the Vulkan driver files chosen, and a first forward on the device (it fails here if none)
{ grep -m1 "model name" /proc/cpuinfo; nproc; echo "VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-} VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  "$BIN" --device "$DEVICE" benchmark --model yolov8n.yaml --imgsz 64 --runs 1 --warmup 0; } >> "$OUT/gpu.txt" 2>&1 || true

# 1. the suite, most telling parts first, each under its own limit
suite() { # name, seconds, test filter
    local t0=$SECONDS rc=0 tests
    YOLODISTILL_TEST_GPU=$DEVICE timeout "$(lim "$2")" $G/gpu_suite "$3" --test-threads 1 --nocapture > "$W/part.log" 2>&1 || rc=$?
    cat "$W/part.log" >> "$OUT/gpu_suite.log"
    # how many tests the filter ran: 0 where this build lacks them (the kernel cache when untuned)
    tests=$(sed -n 's/^running \([0-9]*\) tests\?$/\1/p' "$W/part.log" | head -n 1)
    note "{\"check\": \"suite\", \"part\": \"$1\", \"tests\": ${tests:-null}, \"rc\": $rc, \"seconds\": $((SECONDS - t0))}"
}
if [[ $PARTS == *suite* ]]; then
    suite tensor 60 the_gpu_runs
    suite forward 120 forward_matches
    suite val 90 val_of
    suite train_host 60 assigned_on_the_host
    suite train_device 60 assigned_on_the_device
    suite distilled 60 distilled_steps_match
    suite unlabeled 60 with_unlabeled
    suite kernel_cache 45 second_process
fi

# 2. timings against Ultralytics/PyTorch on this GPU (PyTorch is there; Ultralytics travels)
if [ -f $G/ultralytics.tar.xz ]; then
    mkdir -p $W/py && tar -C $W/py -xJf $G/ultralytics.tar.xz
    # Ultralytics reads polars only to re-read results.csv after each epoch, in a try
    echo 'def read_csv(*a, **k): raise RuntimeError("polars is not here")' > $W/py/polars.py
fi
export PYTHONPATH=$W/py YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$W/ycfg
train_step() { # batch imgsz
    local ours theirs
    ours=$(timeout "$(lim 120)" "$BIN" --device "$DEVICE" bench-train --data "$DATA" --batch "$1" --imgsz "$2" --iters "$RUNS" --json 2>> "$W/bt.log" | tail -n 1) || ours=null
    theirs=$(timeout "$(lim 120)" python3 - "$DATA" "$1" "$2" "$RUNS" "$W/ul" 2>> "$W/ul.log" <<'PY' | tail -n 1
import json, sys, time, torch
from ultralytics import YOLO
data, batch, imgsz, iters, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
steps = []
class Stop(Exception):
    pass
def start(tr):
    torch.cuda.synchronize(); steps.append([time.perf_counter()])
def end(tr):
    torch.cuda.synchronize(); steps[-1].append(time.perf_counter())
    if len(steps) > iters + 2:
        raise Stop
m = YOLO("yolov8n.yaml")
m.add_callback("on_train_batch_start", start)
m.add_callback("on_train_batch_end", end)
try:
    m.train(data=data, imgsz=imgsz, batch=batch, nbs=batch, epochs=100, workers=8, device=0, amp=False, plots=False,
            val=False, project=tmp, name="bench", exist_ok=True, verbose=False)
except Stop:
    pass
t = sum(b - a for a, b in steps[3:])  # after two warm-up steps
print(json.dumps({"train_images_per_s": batch * len(steps[3:]) / t, "torch": torch.__version__}))
PY
) || theirs=null
    note "{\"check\": \"train_step\", \"batch\": $1, \"imgsz\": $2, \"ours\": ${ours:-null}, \"ultralytics\": ${theirs:-null}}"
}
forward() { # batch half
    local ours theirs
    ours=$(timeout "$(lim 90)" "$BIN" --device "$DEVICE" benchmark --model yolov8n.yaml --imgsz 640 --batch "$1" --runs "$RUNS" --json ${2:+--half $2} 2>> "$W/fw.log" | tail -n 1) || ours=null
    theirs=$(timeout "$(lim 90)" python3 - "$1" "$RUNS" "${2:-}" 2>> "$W/ul.log" <<'PY' | tail -n 1
import json, statistics, sys, time, torch
from ultralytics import YOLO
batch, runs, half = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "f16"
m = YOLO("yolov8n.yaml").model.fuse().eval().cuda()
x = torch.rand(batch, 3, 640, 640, device="cuda")
if half:
    m, x = m.half(), x.half()
ms = []
with torch.inference_mode():
    for i in range(runs + 5):
        t = time.perf_counter(); m(x)[0].float().cpu(); ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"median_ms": statistics.median(ms[5:]), "min_ms": min(ms[5:])}))
PY
) || theirs=null
    note "{\"check\": \"forward\", \"batch\": $1, \"half\": \"${2:-}\", \"ours\": ${ours:-null}, \"ultralytics\": ${theirs:-null}}"
}
if [[ $PARTS == *timings* ]]; then
    train_step 16 640
    train_step 64 640
    for half in "" f16; do
        for b in 1 32; do forward $b "$half"; done
    done
fi

# 3. val in f32, f16 and bf16 on the GPU (the suite compared f32 with the CPU)
[[ $PARTS == *val* ]] && for model in "$TEACHER" "$PWD/tests/data/yolo26n_bccd.pt"; do
    for half in "" f16 bf16; do
        v=$(timeout "$(lim 60)" "$BIN" --device "$DEVICE" val --model "$model" --data "$DATA" --json --plots false --project "$W/val" --exist-ok ${half:+--half $half} 2>> "$W/val.log" | tail -n 1) || v=null
        note "{\"check\": \"val\", \"model\": \"$(basename "$model")\", \"half\": \"$half\", \"result\": ${v:-null}}"
    done
done

cp "$W"/*.log "$OUT/" 2> /dev/null || true
python3 - "$RESULTS" "$DEVICE" <<'PY' | tee "$OUT/gpu_check.json"
import json, platform, sys
def parse(line):
    try:
        return json.loads(line)
    except ValueError:  # a check whose output was cut: kept as text
        return {"unparsed": line}
checks = [parse(l) for l in open(sys.argv[1])]
print(json.dumps({"device": sys.argv[2], "host": platform.node(), "checks": checks}, indent=1))
PY
