#!/usr/bin/env bash
# Set up with the test extras, then run the whole suite (slow tests included). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
