#!/usr/bin/env bash
# The GPU suite on Mesa's software Vulkan (lavapipe), for a machine without a GPU (issue 31):
# installs Mesa 25 from bookworm-backports (Debian 12), selects lavapipe alone, builds the `wgpu`
# feature and runs, with the kernel cache shared by every process of the run:
#   - tests/gpu.rs (the GPU against the CPU through the command: training steps, val, kernel cache),
#   - the fixture parity of all six families on the GPU (tests/parity.rs with YOLODISTILL_DEVICE).
# Not in .ci/run: the `wgpu` build alone took 54 min on a 2-core machine (benches/results/gpu/).
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
cargo build --locked --features wgpu
cargo test --locked --features wgpu --test gpu -- --test-threads 1
YOLODISTILL_DEVICE=wgpu cargo test --locked --features wgpu --test parity -- --test-threads 1
