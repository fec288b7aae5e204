# Sourced by dev/export.sh and dev/test.sh: make .venv with everything surgeon needs.
# Idempotent: a second run only checks. torch and torchvision are pinned to the pair this
# kind of machine has on its local disk (torch 2.14.1 is a CUDA build that runs on the CPU,
# ~5.5 GB with torchvision; plain `torch` or a newer pin would download several GB). The
# tests build real torchvision and timm architectures, and the main job runs in the same
# environment, so what the tests check is what `surgeon export` runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run takes a minute or two)" >&2
    "$PY" -m venv .venv
fi
stamp=".venv/.surgeon-installed"
want="$(cat pyproject.toml dev/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
