#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, then `surgeon export` (default: the embedded
# zoo model, slimmed at ratio 0.5, exported, checked in onnxruntime, timed, reported).
set -euo pipefail
here="$(pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$here"
surgeon export "$@"
