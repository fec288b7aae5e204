#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up, lint, tests. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The HTML report's test renders the page in headless Chromium (Debian's package); where it
# cannot be installed, that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the HTML report's test" >&2
    { timeout 600 apt-get install -y -q chromium || { timeout 300 apt-get update -q \
        && timeout 600 apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
        || echo "chromium could not be installed: the HTML page test will skip" >&2
fi
ruff check .
ruff format --check surgeon tests bench examples
python -m pytest -q "$@"
