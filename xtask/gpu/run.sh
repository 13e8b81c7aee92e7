#!/usr/bin/env bash
# The GPU check, on a machine with one H200, its driver, and a Python environment with PyTorch
# (and transformers for the peer); no network. Made by `cargo xtask gpu-check`, which put the
# release binaries in bin.tar.xz (unpacked to $WORK/bin) and the scripts beside this file.
#
#   bash run.sh            # results in $RESULTS (default: $OUT if set, else ./results)
#
# Steps, each under its own timeout, each skipped with a note when what it needs is absent:
#  1. facts about the machine (env.json): GPU, driver, torch, transformers, onnxruntime
#     providers, gguf;
#  2. gen_model.py: a random Llama-3-8B-shaped model in bf16 (safetensors) under $WORK;
#  3. our candle CUDA backend through the engine at $CLIENTS concurrent sequences;
#  4. our llama.cpp CUDA backend (bin/gpu_bench_llama_cpp, built only on request) on a GGUF
#     converted with to_gguf.py;
#  5. the Hugging Face transformers peer on the same weights and prompts;
#  6. ONNX Runtime: whether the machine's onnxruntime lists CUDAExecutionProvider, and if so
#     our ORT backend's CUDA EP on the shipped tiny ONNX model (no 8B ONNX export here);
#  7. report.py: results.json and results.md (tokens/s, TTFT, GPU memory, ratios).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS=${RESULTS:-${OUT:-$HERE/results}}
WORK=${WORK:-/tmp/llm-pipeline-gpu-check}
PY=${PYTHON:-python3}
CLIENTS=${CLIENTS:-1,32,128}
TOKENS=${TOKENS:-128}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-512}
# A smoke test of this script on a CPU machine: MODEL_CONFIG=tiny DEVICE=cpu bash run.sh
MODEL_CONFIG=${MODEL_CONFIG:-llama3-8b}
DEVICE=${DEVICE:-cuda}
BAN=128001,128008,128009 # <|end_of_text|>, <|eom_id|>, <|eot_id|>
T_GEN=${T_GEN:-200}
T_RUN=${T_RUN:-150}
mkdir -p "$RESULTS" "$WORK"
: >"$RESULTS/notes.txt"
note() { echo "NOTE: $*" >&2; echo "$*" >>"$RESULTS/notes.txt"; }
step() { echo "=== $(date -u +%T) $*" >&2; }
started=$(date +%s)

WEIGHT_BYTES=0
report() { step "report"; "$PY" "$HERE/report.py" "$RESULTS" "$WEIGHT_BYTES"; }
# A run cut short still leaves a report of the levels that finished.
trap 'note "run.sh was stopped"; report; exit 143' TERM INT

step "unpack"
# The binaries travel xz-compressed (the candle kernels' PTX is most of their size).
BIN=$WORK/bin
rm -rf "$BIN"
tar -xJf "$HERE/bin.tar.xz" -C "$WORK" 2>/dev/null ||
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$HERE/bin.tar.xz" "$WORK" ||
    note "unpacking bin.tar.xz failed"
ls -la "$BIN" >&2

step "environment"
# cuBLAS, cuRAND and cudart 13 come from the Python environment's NVIDIA wheels.
# Every NVIDIA wheel's lib/ (ONNX Runtime's CUDA provider wants cuDNN and more from them), then a
# system CUDA 13 install's libraries if the wheels lack cudart/cuBLAS 13 (a torch built for CUDA
# 12 brings .so.12 ones).
NV_LIBS=$("$PY" - <<'EOF'
import glob, os, sys
dirs = []
for p in sys.path:
    for d in glob.glob(os.path.join(p, "nvidia", "cu13", "lib")) + sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib"))):
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
needed = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"]
def has(d, name):
    return bool(glob.glob(os.path.join(d, name + "*")))
system = sorted(glob.glob("/usr/local/cuda*/lib64")) + sorted(glob.glob("/usr/local/cuda*/targets/*/lib"))
for name in needed:
    if not any(has(d, name) for d in dirs):
        dirs += [d for d in system if has(d, name) and d not in dirs][:1]
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="${NV_LIBS}${NV_LIBS:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-}"
# The GGUF writer: the machine's own gguf package if it has one, else the one shipped in pylib/.
"$PY" -c "import gguf" 2>/dev/null || export PYTHONPATH="$HERE/pylib${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - >"$RESULTS/env.json" <<'EOF'
import json, subprocess
env = {}
try:
    env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                 "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError as e:
    env["gpu"] = f"nvidia-smi: {e}"
for mod in ["torch", "transformers", "onnxruntime", "gguf", "numpy"]:
    try:
        m = __import__(mod)
        env[mod] = getattr(m, "__version__", "present")
    except Exception as e:
        env[mod] = None
try:
    import torch
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
except Exception:
    pass
try:
    import onnxruntime
    env["onnxruntime_providers"] = onnxruntime.get_available_providers()
except Exception as e:
    env["onnxruntime_providers"] = None
print(json.dumps(env, indent=1))
EOF
cat "$RESULTS/env.json" >&2
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
for bin in "$BIN"/gpu_bench* "$BIN"/llama-libs/libggml-cuda*; do
    [ -f "$bin" ] || continue
    missing=$(LD_LIBRARY_PATH="$BIN/llama-libs:$LD_LIBRARY_PATH" ldd "$bin" 2>/dev/null | grep 'not found' | tr -s ' \t' ' ')
    [ -n "$missing" ] && note "$(basename "$bin") lacks libraries:$missing"
done
df -h "$WORK" >&2

step "model"
MODEL=$WORK/model
if [ -f "$MODEL/model.safetensors" ] && [ -f "$WORK/model.json" ]; then
    echo "reusing $MODEL" >&2
else
    timeout "$T_GEN" "$PY" "$HERE/gen_model.py" "$MODEL" --config "$MODEL_CONFIG" --device "$DEVICE" >"$WORK/model.json" ||
        { note "gen_model.py failed or timed out after ${T_GEN}s"; rm -f "$WORK/model.json"; }
fi
WEIGHT_BYTES=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['weight_bytes'])" "$WORK/model.json" 2>/dev/null || echo 0)
echo "weight bytes: $WEIGHT_BYTES" >&2

bench() { # label backend model [extra args...]
    local label=$1 backend=$2 model=$3 bin=$BIN/gpu_bench
    shift 3
    local libs=$BIN/llama-libs
    [ "$backend" = llama-cpp ] && bin=$BIN/gpu_bench_llama_cpp
    step "$label"
    LD_LIBRARY_PATH="$libs:$LD_LIBRARY_PATH" GGML_BACKENDS_DIR="$libs" timeout "$T_RUN" "$bin" --backend "$backend" --model "$model" --label "$label" \
        --prompts "$HERE/prompts.json" --max-model-len "$MAX_MODEL_LEN" --device "$DEVICE" "$@" \
        >"$RESULTS/$label.jsonl" 2>"$RESULTS/$label.log"
    local rc=$?
    [ $rc -ne 0 ] && note "$label exited with $rc (timeout is 124; see $label.log): $(tail -n 3 "$RESULTS/$label.log" | tr '\n' ' ')"
    cat "$RESULTS/$label.jsonl" >&2
}

if [ "$WEIGHT_BYTES" -gt 0 ]; then
    if [ -x "$BIN/gpu_bench" ]; then
        bench "candle-$DEVICE" candle "$MODEL" --clients "$CLIENTS" --tokens "$TOKENS" --ban "$BAN"
    else
        note "candle: bin/gpu_bench is absent; skipped"
    fi

    if [ -x "$BIN/gpu_bench_llama_cpp" ]; then
        step "gguf"
        if [ -f "$WORK/model.gguf" ] || timeout "$T_GEN" "$PY" "$HERE/to_gguf.py" "$MODEL" "$WORK/model.gguf" >&2; then
            bench "llama-cpp-$DEVICE" llama-cpp "$WORK/model.gguf" --clients "$CLIENTS" --tokens "$TOKENS" --ban "$BAN"
        else
            note "llama.cpp: the GGUF conversion failed (gguf needs NumPy and PyYAML); skipped"
        fi
    else
        note "llama.cpp: bin/gpu_bench_llama_cpp was not built (cargo xtask gpu-check --with-llama-cpp; its CUDA build takes 35-45 min on 2 cores); skipped"
    fi

    step "hf-transformers"
    if "$PY" -c "import torch, transformers" 2>/dev/null; then
        timeout "$T_RUN" "$PY" "$HERE/hf_peer.py" --model "$MODEL" --prompts "$HERE/prompts.json" \
            --clients "$CLIENTS" --tokens "$TOKENS" >"$RESULTS/hf-transformers.jsonl" 2>"$RESULTS/hf-transformers.log" ||
            note "hf_peer.py failed or timed out: $(tail -n 3 "$RESULTS/hf-transformers.log" | tr '\n' ' ')"
        cat "$RESULTS/hf-transformers.jsonl" >&2
    else
        note "transformers is not installed: no peer"
    fi
fi

step "onnxruntime"
ORT_LIB=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, onnxruntime
if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
    libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
    print(libs[0] if libs else "")
EOF
)
if [ -z "$ORT_LIB" ]; then
    note "onnxruntime here does not list CUDAExecutionProvider (or is absent): the ORT CUDA EP was not run"
elif [ -x "$BIN/gpu_bench" ]; then
    echo "ONNX Runtime with CUDA: $ORT_LIB" >&2
    ORT_DYLIB_PATH=$ORT_LIB bench "ort-$DEVICE-tiny" ort "$HERE/ort-tiny" --clients 1,8 --tokens 32
fi

report
echo "total $(( $(date +%s) - started ))s" >&2
