#!/usr/bin/env bash
# Issue 31's scope 0: why the `vulkan` feature crashes Mesa's lavapipe. Builds the vulkan feature
# with cubecl's SPIR-V dumps (feature vulkan-spirv-dump, which also skips the device check that
# refuses such a device), runs a first forward on lavapipe with every compiled module written to
# a folder, then runs `spirv-val` (Debian: spirv-tools) on each module and names the invalid ones.
# The newest module is the one being compiled when the process died.
#   bash scripts/vulkan_spirv_check.sh [OUT]      (OUT: where the modules go, default a temp folder)
set -uo pipefail
cd "$(dirname "$0")/.."
command -v spirv-val > /dev/null || { echo "vulkan_spirv_check.sh: needs spirv-val (apt-get install spirv-tools)" >&2; exit 2; }
OUT=${1:-$(mktemp -d /tmp/yolodistill-spirv.XXXXXX)}
# a folder of its own: the modules of an earlier run would mix with this one's
[ -z "$(ls -A "$OUT" 2> /dev/null)" ] || { echo "vulkan_spirv_check.sh: $OUT is not empty; name a new or empty folder" >&2; exit 2; }
mkdir -p "$OUT"
cargo build --quiet --features vulkan-spirv-dump || exit 1
KERNELS=$(mktemp -d /tmp/yolodistill-kernels.XXXXXX)     # an empty kernel cache: everything compiles
VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-/usr/share/vulkan/icd.d/lvp_icd.json} YOLODISTILL_CACHE=$KERNELS CUBECL_DEBUG_PLIRON=$OUT \
    timeout 900 target/debug/yolodistill --device vulkan benchmark --model yolov8n.yaml --imgsz 64 > "$OUT/run.log" 2>&1
rc=$?
echo "a first forward (benchmark --imgsz 64) on the Vulkan device: exit code $rc (139: SIGSEGV)"
rm -rf "$KERNELS"
echo "$(find "$OUT" -name module.spv | wc -l) modules in $OUT; the newest: $(ls -t "$OUT"/*/module.spv | head -1)"
invalid=0
for m in $(find "$OUT" -name module.spv); do
    if ! err=$(spirv-val --target-env vulkan1.3 "$m" 2>&1); then
        invalid=$((invalid + 1))
        echo "INVALID $(basename "$(dirname "$m")"):"
        echo "$err" | head -3 | sed 's/^/    /'
    fi
done
echo "$invalid invalid modules"
