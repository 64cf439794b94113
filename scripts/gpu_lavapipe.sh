#!/usr/bin/env bash
# The GPU suite on Mesa's software Vulkan (lavapipe), for a machine without a GPU (issue 31):
# installs Mesa 25 from bookworm-backports (Debian 12) unless lavapipe is there, selects lavapipe
# alone, builds the `wgpu-untuned` feature (the wgpu backend with one fixed kernel per operation:
# autotune's candidates and fusion's generated kernels cost seconds each in lavapipe's LLVM, which
# kept one training step from finishing in 35 minutes) in the dev profile (the CPU build's
# dependencies whose features do not change are reused), and runs
#   - tests/gpu.rs: the GPU against the CPU (forward of every family, one training step and two
#     through the command, distilled and with unlabeled images, `val`, half precision),
#   - the fixture parity of all six families on the GPU (tests/parity.rs with YOLODISTILL_DEVICE).
# It fails, rather than skips, when no Vulkan device is found: the suite's first test makes one.
set -euo pipefail
cd "$(dirname "$0")/.."
ICD=/usr/share/vulkan/icd.d/lvp_icd.json
if [ ! -f "$ICD" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if grep -q bookworm /etc/os-release && [ ! -f /etc/apt/sources.list.d/backports.list ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/backports.list > /dev/null
        release="-t bookworm-backports"
    fi
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${release:-} mesa-vulkan-drivers libvulkan1
fi
export VK_ICD_FILENAMES=$ICD          # lavapipe alone: a run never lands on another device
export YOLODISTILL_TEST_GPU=wgpu
export YOLODISTILL_CACHE=${YOLODISTILL_CACHE:-$(mktemp -d /tmp/yolodistill-kernels.XXXXXX)}
GPU=(--locked --features wgpu-untuned)
cargo test "${GPU[@]}" --test gpu -- --test-threads 1
YOLODISTILL_DEVICE=wgpu cargo test "${GPU[@]}" --test parity -- --test-threads 1
