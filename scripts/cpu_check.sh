#!/usr/bin/env bash
# Issue 34's checks on a CPU with bf16 arithmetic (AVX512-BF16: AMD Zen 4, Intel Cooper Lake and
# later; AMX as well on Sapphire Rapids), such as a lent device machine's host, in two steps:
#   scripts/cpu_check.sh --prepare   here: builds the binary and the test binaries that hold the
#       bf16 paths (the library's unit tests, tests/kernels.rs, tests/mixed_precision.rs), strips and
#       compresses them into .cpu/ (ignored by git; carry it), with BCCD, the BCCD teacher and
#       Ultralytics' Python package (PyTorch itself must be on the machine).
#   scripts/cpu_check.sh             there (no network), from the repository root, on the cores
#       CORES (default 0,1: the issue's figures are two threads), each check under its own limit
#       within BUDGET seconds (default 480):
#       1. the bf16 tests (on the native kernel where the CPU has AVX512-BF16),
#       2. the distilled cwd step against the plain one, fp32 and --amp bf16 (bench-train --teacher),
#       3. scripts/bench_train.sh: ours fp32 and --amp bf16 against PyTorch fp32 and bf16 autocast,
#       4. scripts/bench_forward.sh (onnxruntime where Python has it),
#       5. bench-conv: each convolution in f32 against bf16 products,
#       and writes the results as JSON lines and logs into $OUT (a temporary folder without it).
# On a CPU without bf16 arithmetic every check still runs, bf16 emulated (about f32's cost).
set -euo pipefail
cd "$(dirname "$0")/.."
CORES=${CORES:-0,1}
BUDGET=${BUDGET:-480}
[[ $BUDGET =~ ^[1-9][0-9]*$ ]] || { echo "cpu_check.sh: BUDGET must be a positive integer, not '$BUDGET'" >&2; exit 2; }
[[ $CORES =~ ^[0-9]+([-,][0-9]+)*$ ]] || { echo "cpu_check.sh: CORES must be a taskset core list such as 0,1 or 0-3, not '$CORES'" >&2; exit 2; }
C=.cpu
TESTS="lib kernels mixed_precision"
# the path of test binary $1 (lib: the library's unit tests), built if needed
built_test() {
    local sel=(--test "$1") name=$1
    [ "$1" = lib ] && sel=(--lib) name=yolodistill
    cargo test "${sel[@]}" --no-run --message-format json 2> /dev/null | python3 -c "
import json, sys
print([m['executable'] for m in map(json.loads, sys.stdin)
       if m.get('executable') and m['profile']['test'] and m['target']['name'] == sys.argv[1]][0])" "$name"
}

if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.cpu/' .git/info/exclude 2> /dev/null || { mkdir -p .git/info && echo '/.cpu/' >> .git/info/exclude; }
    cargo build
    rm -rf $C && mkdir -p $C/shared/fixtures $C/shared/data
    # symbols kept: bench_train.sh looks for the JPEG decoder's SIMD in them
    strip --strip-debug -o $C/yolodistill target/debug/yolodistill
    for t in $TESTS; do
        strip -o "$C/test_$t" "$(built_test "$t")"
    done
    xz -T2 -6 -f $C/yolodistill $C/test_*
    cp -r --no-preserve=mode ../shared/data/bccd $C/shared/data/bccd
    rm -f $C/shared/data/bccd/labels/*.cache*
    cp --no-preserve=mode ../shared/fixtures/teacher_v8s_bccd.pt $C/shared/fixtures/
    if PY=$(../shared/tools/ref-env.sh 2> /dev/null | tail -n 1) && site=$("$PY" -c "import ultralytics, os; print(os.path.dirname(os.path.dirname(ultralytics.__file__)))"); then
        tar -C "$site" --exclude=__pycache__ -cJf $C/ultralytics.tar.xz ultralytics
    fi
    du -sh $C
    exit 0
fi

DEADLINE=$((SECONDS + BUDGET))
# a check's limit: its own, or what is left of the budget (at least 5 s)
lim() { local left=$((DEADLINE - SECONDS)); ((left < $1)) && echo $((left > 5 ? left : 5)) || echo "$1"; }
OUT=${OUT:-$(mktemp -d)}
# another run's results are never written over
[ -e "$OUT/results.jsonl" ] && { echo "cpu_check.sh: OUT=$OUT already holds results.jsonl (another run's); name an empty folder" >&2; exit 2; }
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
RESULTS=$OUT/results.jsonl # written as each check ends: a run stopped at its limit still tells
: > "$RESULTS"
note() { echo "$1" >> "$RESULTS"; }
on_cores() { taskset -c "$CORES" "$@"; }

# The test binaries were built in /work/main with ../shared beside it: the same paths here. The
# scripts below run from /work/main too, so that their ../shared is /work/shared.
if [ -d $C ]; then
    [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
    [ -e /work/shared ] || ln -s "$PWD/$C/shared" /work/shared
    for f in $C/*.xz; do
        [ "$f" = $C/ultralytics.tar.xz ] || [ -x "${f%.xz}" ] || { xz -dkf "$f" && chmod +x "${f%.xz}"; }
    done
    mkdir -p target/debug && cp $C/yolodistill target/debug/yolodistill
    if [ -f $C/ultralytics.tar.xz ]; then
        mkdir -p "$W/py" && tar -C "$W/py" -xJf $C/ultralytics.tar.xz
        # Ultralytics reads polars only to re-read results.csv after each epoch, in a try
        echo 'def read_csv(*a, **k): raise RuntimeError("polars is not here")' > "$W/py/polars.py"
    fi
    export PYTHONPATH=$W/py YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$W/ycfg PY=${PY:-python3}
else
    [ -x target/debug/yolodistill ] || cargo build --quiet
fi
cd /work/main 2> /dev/null || true
BIN=$PWD/target/debug/yolodistill
SHARED=$(cd ../shared && pwd)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | { grep -xE 'avx512f|avx512_bf16|amx_tile|amx_bf16' || true; } | sort | tr '\n' ' ')
note "{\"check\": \"cpu\", \"model\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": \"$CORES\", \"flags\": \"$flags\"}"

# 1. the bf16 tests: the library's (rounding, packing, the native kernel against emulation), the
#    kernels' (our bf16 convolution against burn's f32 one of rounded operands) and the teacher's
test_binary() { if [ -d $C ]; then echo "$C/test_$1"; else built_test "$1"; fi; }
for t in $TESTS; do
    filter=bf16
    [ "$t" = mixed_precision ] && filter=""
    t0=$SECONDS rc=0
    on_cores timeout "$(lim 240)" "$(test_binary "$t")" $filter --test-threads 1 > "$W/test_$t.log" 2>&1 || rc=$?
    passed=$(sed -n 's/^test result: .* \([0-9]*\) passed.*/\1/p' "$W/test_$t.log" | head -n 1)
    note "{\"check\": \"tests\", \"part\": \"$t\", \"passed\": ${passed:-null}, \"rc\": $rc, \"seconds\": $((SECONDS - t0))}"
done

# 2. the distilled step (the shared teacher, cwd) against the plain one, fp32 and bf16 products
for amp in false bf16; do
    r=$(on_cores timeout "$(lim 150)" "$BIN" bench-train --data "$SHARED/data/bccd/data.yaml" --imgsz 320 --batch 16 --iters 4 --data-batches 1 \
        --teacher "$SHARED/fixtures/teacher_v8s_bccd.pt" --distill cwd --amp $amp --json 2>> "$W/distill.log" | tail -n 1) || r=null
    note "{\"check\": \"distilled_step\", \"amp\": \"$amp\", \"result\": ${r:-null}}"
done

# 3.-4. the issue's training and forward benchmarks (bf16 timed on both sides where the CPU has it)
for s in bench_train bench_forward; do
    t0=$SECONDS rc=0
    NO_BUILD=1 on_cores timeout "$(lim 300)" bash scripts/$s.sh > "$W/$s.log" 2>&1 || rc=$?
    note "{\"check\": \"$s\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"output\": $(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$W/$s.log")}"
done

# 5. each convolution of a training step: ours in f32 against ours with bf16 products
r=$(on_cores timeout "$(lim 120)" "$BIN" bench-conv --bf16 --reps 3 2> "$W/bench_conv.log" | tail -n 1) || r=""
note "{\"check\": \"bench_conv_bf16\", \"total\": $(echo "$r" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')}"

cp "$W"/*.log "$OUT/" 2> /dev/null || true
python3 - "$RESULTS" <<'PY' | tee "$OUT/cpu_check.json"
import json, sys
def parse(line):
    try:
        return json.loads(line)
    except ValueError:  # a check whose output was cut: kept as text
        return {"unparsed": line}
print(json.dumps({"checks": [parse(l) for l in open(sys.argv[1])]}, indent=1))
PY
