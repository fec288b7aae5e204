# Sourced by dev/export.sh and dev/test.sh: make .venv with everything surgeon needs.
# Idempotent: a second run only checks. torch is pinned to the CPU wheel this kind of
# machine has on disk (plain `torch` would pull a multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run takes a minute or two)" >&2
    "$PY" -m venv .venv
fi
stamp=".venv/.surgeon-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
