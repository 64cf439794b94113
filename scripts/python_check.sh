#!/usr/bin/env bash
# The Python package end to end (issue 33): builds the wheel with maturin from this checkout
# (the dev profile, so `cargo test`'s build is reused), installs it into a fresh virtual
# environment and runs python/tests with pytest there. Needs python3 with venv, PyPI, ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d /tmp/yolodistill-python.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build"
"$work/build/bin/pip" install -q "maturin>=1.5,<2"
# --strip: the dev build's debug info would make the wheel 94 MB instead of 7
"$work/build/bin/maturin" build --locked --profile dev --strip --out "$work/wheels"

python3 -m venv "$work/env"
"$work/env/bin/pip" install -q "$work"/wheels/*.whl pytest
# from the temporary folder, so that `import yolodistill` finds the installed package
cd "$work"
"$work/env/bin/python" -m pytest -q -p no:cacheprovider "$repo/python/tests"
