#!/usr/bin/env bash
# What CI runs (.ci/run), in two jobs; both must pass:
#  1. the whole suite, slow tests included, on the newest versions pyproject.toml allows (what a new
#     user gets); extra arguments go to pytest here (e.g. -m "not slow" for a fast loop);
#  2. the parity-critical tests (shared prefix, cached generate, export/PEFT, DePT, components, the attention
#     selector read through transformers' attention interface, serving payloads, model cards) on the lowest
#     supported versions (ci/constraints-lowest.txt). SOFTPROMPT_SKIP_LOWEST=1 skips it locally.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
bash scripts/setup.sh test
# Then, at once (pip keeps to one core, so each of these would leave the other idle): the llmcompressor
# environment (GPTQ / SparseGPT / Wanda; it pins an older transformers), the lowest-versions one, and DeepSpeed's
# CPU communication op, which it otherwise compiles at its first use (~45 s) in the middle of the tests.
logs=$(mktemp -d)
bash scripts/setup.sh compress > "$logs/compress" 2>&1 & compress=$!
lowest=""
if [ "${SOFTPROMPT_SKIP_LOWEST:-0}" != 1 ]; then
  bash scripts/setup.sh test lowest > "$logs/lowest" 2>&1 & lowest=$!
fi
.venv/bin/python -c "from deepspeed.accelerator import get_accelerator
get_accelerator().create_op_builder('ShareMemCommBuilder').load()" > "$logs/deepspeed" 2>&1 || true  # built at first use otherwise
for job in compress ${lowest:+lowest}; do
  pid=${!job}
  if ! wait "$pid"; then cat "$logs/$job"; echo "setup ($job) failed"; exit 1; fi
  cat "$logs/$job"
done
export SOFTPROMPT_COMPRESS_PYTHON="$PWD/.venv-compress/bin/python"
echo "== newest versions: the whole suite (setup took ${SECONDS}s)"
if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
else
  # on two workers, one torch thread each. The multi-process tests (marked multiprocess: each starts process pairs,
  # on a port of its own) leave a core idle a third of the time, which the other worker's tests fill; they go
  # first, by module (--dist loadscope: a module's fixtures, e.g. its 1-process reference runs, are built once)
  OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope \
    tests/test_distributed.py tests
fi
if [ "${SOFTPROMPT_SKIP_LOWEST:-0}" = 1 ]; then
  echo "== lowest versions: skipped (SOFTPROMPT_SKIP_LOWEST=1)"
  exit 0
fi
echo "== lowest versions: parity-critical tests (+ one run through the trackers and the curves plot)"
.venv-lowest/bin/python -m pytest -q -p no:cacheprovider tests/test_shared_prefix.py tests/test_cached_generate.py \
  tests/test_export.py tests/test_score_head.py tests/test_dept.py tests/test_compat.py tests/test_components.py tests/test_train.py::test_run_dir_outputs \
  tests/test_train.py::test_trackers_wandb_offline_and_tensorboard \
  tests/test_idp.py::test_attention_scores_equal_eager_attention_maps tests/test_idp.py::test_selection_follows_the_prompts_not_the_bank_order \
  tests/test_idp.py::test_dept_entries_generate_offsets_new_tokens_per_row tests/test_model_card.py tests/test_serving.py
