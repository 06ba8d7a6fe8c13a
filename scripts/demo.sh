#!/usr/bin/env bash
# The main job on the embedded default: set up, then prompt-tune the bundled model offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 exec .venv/bin/softprompt demo "$@"
