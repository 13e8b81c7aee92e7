#!/bin/sh
# The container's command: ai-runner's environment for the `llm` pipeline, served by
# `llm-pipeline serve`. Arguments are passed on as flags (`docker run IMAGE --max-num-seqs 64`).
#
# As `livepeer/ai-runner:llm` (runner/docker/Dockerfile.llm): port 8000 on all addresses,
# /models as the model cache (MODEL_DIR), PIPELINE and MODEL_ID given at run time, and the
# pipeline's variables (USE_8BIT, MAX_NUM_BATCHED_TOKENS, MAX_NUM_SEQS, MAX_MODEL_LEN,
# GPU_MEMORY_UTILIZATION, TENSOR_PARALLEL_SIZE, PIPELINE_PARALLEL_SIZE, AUTH_TOKEN) read by the
# program itself with the same defaults.
set -eu

PIPELINE="${PIPELINE:-llm}"
if [ "$PIPELINE" != "llm" ]; then
    echo "PIPELINE=$PIPELINE: this image serves the llm pipeline only" >&2
    exit 64
fi
if [ -z "${MODEL_ID:-}" ]; then
    echo "MODEL_ID is not set: the model to serve (a Hugging Face id such as" \
        "HuggingFaceTB/SmolLM2-135M-Instruct, or a file or folder under /models)" >&2
    exit 64
fi
# ai-runner's images name the model cache through HUGGINGFACE_HUB_CACHE as well.
export MODEL_DIR="${MODEL_DIR:-${HUGGINGFACE_HUB_CACHE:-/models}}"
export HOST="${HOST:-0.0.0.0}"
export PORT="${PORT:-8000}"

exec "${LLM_PIPELINE:-llm-pipeline}" serve "$@"
