#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up, lint, tests. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
ruff format --check surgeon tests bench examples
python -m pytest -q "$@"
