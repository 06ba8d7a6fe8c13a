#!/usr/bin/env bash
# What CI runs (.ci/run), in two jobs; both must pass:
#  1. the whole suite, slow tests included, on the newest versions pyproject.toml allows (what a new
#     user gets); extra arguments go to pytest here (e.g. -m "not slow" for a fast loop);
#  2. the parity-critical tests (shared prefix, cached generate, export/PEFT, DePT, components, the attention
#     selector read through transformers' attention interface, serving payloads, model cards) on the lowest
#     supported versions (ci/constraints-lowest.txt). SOFTPROMPT_SKIP_LOWEST=1 skips it locally.
# GPTQ / SparseGPT / Wanda run through llmcompressor in its own environment (it pins an older transformers).
# That environment and the lowest one are installed in the background while the newest suite runs the tests
# that need neither (installing is mostly waiting on downloads and disk); the llmcompressor tests run once it
# is ready, with the rest of the newest job.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
bash scripts/setup.sh test
logs=$(mktemp -d)
lowest=1
[ "${SOFTPROMPT_SKIP_LOWEST:-0}" = 1 ] && lowest=0
( bash scripts/setup.sh compress > "$logs/compress.log" 2>&1 || { echo "setup compress failed" >> "$logs/compress.log"; exit 1; }
  if [ "$lowest" = 1 ]; then bash scripts/setup.sh test lowest > "$logs/lowest.log" 2>&1; fi ) &
setup_pid=$!
finish_setup() {
  if ! wait "$setup_pid"; then
    cat "$logs"/*.log
    echo "setup of .venv-compress / .venv-lowest failed (above)"
    exit 1
  fi
  cat "$logs"/*.log
}
pytest_newest() { .venv/bin/python -m pytest -q -p no:cacheprovider "$@"; }
if [ $# -gt 0 ]; then  # a developer's selection: run it whole once every environment is there
  finish_setup
  export SOFTPROMPT_COMPRESS_PYTHON="$PWD/.venv-compress/bin/python"
  echo "== newest versions (setup took ${SECONDS}s)"
  pytest_newest "$@"
else
  echo "== newest versions: the whole suite but the llmcompressor tests (setup of .venv took ${SECONDS}s)"
  pytest_newest -m "not llmcompressor"
  finish_setup
  export SOFTPROMPT_COMPRESS_PYTHON="$PWD/.venv-compress/bin/python"
  echo "== newest versions: the llmcompressor tests (through .venv-compress)"
  pytest_newest -m llmcompressor
fi
if [ "$lowest" = 0 ]; then
  echo "== lowest versions: skipped (SOFTPROMPT_SKIP_LOWEST=1)"
  exit 0
fi
echo "== lowest versions: parity-critical tests (+ one run through the trackers and the curves plot)"
.venv-lowest/bin/python -m pytest -q -p no:cacheprovider tests/test_shared_prefix.py tests/test_cached_generate.py \
  tests/test_export.py tests/test_score_head.py tests/test_dept.py tests/test_compat.py tests/test_components.py tests/test_train.py::test_run_dir_outputs \
  tests/test_train.py::test_trackers_wandb_offline_and_tensorboard \
  tests/test_idp.py::test_attention_scores_equal_eager_attention_maps tests/test_idp.py::test_selection_follows_the_prompts_not_the_bank_order \
  tests/test_idp.py::test_dept_entries_generate_offsets_new_tokens_per_row tests/test_model_card.py tests/test_serving.py
