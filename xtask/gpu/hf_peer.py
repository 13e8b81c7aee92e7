"""The peer: Hugging Face transformers' batched greedy generate on the same weights and prompts.

One JSON line per concurrency level, with the keys gpu_bench prints. A level of C sequences is
one `generate` call over C chat prompts (client c asks prompts[c % len], rendered with the
model's chat template, left-padded), greedy, exactly `--tokens` new tokens each
(`min_new_tokens` bans the end-of-generation ids, as gpu_bench's logit bias does).
tokens/s = C x tokens / wall time of that call; time to first token = the wall time of the same
call with one new token (prefill and the first token), median and p99 being that same value
since a batch's sequences start and get their first token together; time per output token =
(wall - ttft) / (tokens - 1). Memory: the device's peak in use during the level (nvidia-smi,
every 100 ms) less what was in use before the model loaded, as gpu_bench reports it.

    python3 hf_peer.py --model DIR --prompts prompts.json [--clients 1,32,128] [--tokens 128]
"""

import argparse
import json
import subprocess
import threading
import time


def gpu_used_mib():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class Sampler:
    """The device's peak memory in use since the last take_peak()."""

    def __init__(self):
        self.peak = gpu_used_mib()
        self.stop = False
        if self.peak is not None:
            threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            now = gpu_used_mib()
            if now is not None:
                self.peak = max(self.peak, now)
            time.sleep(0.1)

    def take_peak(self):
        if self.peak is None:
            return None
        now = gpu_used_mib() or 0
        peak, self.peak = max(self.peak, now), now
        return peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--clients", default="1,32,128")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--label", default="hf-transformers")
    args = ap.parse_args()

    sampler = Sampler()
    baseline = sampler.take_peak()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(args.prompts) as f:
        prompts = json.load(f)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]

    def generate(clients, tokens):
        texts = [
            tok.apply_chat_template([{"role": "user", "content": prompts[c % len(prompts)]}],
                                    tokenize=False, add_generation_prompt=True)
            for c in range(clients)
        ]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        return wall, int(out.shape[1] - batch["input_ids"].shape[1]) * clients

    generate(2, 4)  # warm-up: kernels, cuBLAS handles, the allocator's pools
    sampler.take_peak()
    for clients in [int(c) for c in args.clients.split(",") if c]:
        ttft, _ = generate(clients, 1)
        wall, tokens = generate(clients, args.tokens)
        peak = sampler.take_peak()
        per = tokens // clients
        print(json.dumps({
            "system": args.label, "backend": "transformers " + transformers.__version__,
            "clients": clients, "tokens": tokens, "short_answers": 0 if per == args.tokens else clients,
            "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": ttft * 1e3, "ttft_p99_ms": ttft * 1e3,
            "tpot_p50_ms": (wall - ttft) * 1e3 / max(per - 1, 1),
            "load_s": load_s, "gpu_mem_peak_mib": peak,
            "gpu_mem_used_mib": None if peak is None or baseline is None else peak - baseline,
            "torch_max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        }), flush=True)
    sampler.stop = True


if __name__ == "__main__":
    main()
