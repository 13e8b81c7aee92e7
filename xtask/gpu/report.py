"""Gathers run.sh's JSON lines into results.json and a Markdown table with the ratios.

ratio to peer: tokens/s over the Hugging Face peer's at the same concurrency.
ratio to bandwidth: tokens/s over C x 4.8e12 / weight bytes, the rate at which an H200 can
stream the weights once per decode step of C sequences (KV reads ignored); at C = 1 it is the
single-sequence bandwidth limit.

    python3 report.py RESULTS_DIR WEIGHT_BYTES
"""

import glob
import json
import os
import sys

BANDWIDTH = 4.8e12
PEER = "hf-transformers"


def main():
    out, weight_bytes = sys.argv[1], int(sys.argv[2])
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    peer = {r["clients"]: r["tokens_per_s"] for r in rows if r["system"] == PEER}
    limit = BANDWIDTH / weight_bytes if weight_bytes else None
    for r in rows:
        base = peer.get(r["clients"])
        r["ratio_to_peer"] = r["tokens_per_s"] / base if base else None
        r["ratio_to_bandwidth"] = r["tokens_per_s"] / (r["clients"] * limit) if limit else None
    notes = []
    notes_path = os.path.join(out, "notes.txt")
    if os.path.exists(notes_path):
        with open(notes_path) as f:
            notes = [n.rstrip("\n") for n in f if n.strip()]
    env = {}
    env_path = os.path.join(out, "env.json")
    if os.path.exists(env_path):
        with open(env_path) as f:
            env = json.load(f)
    result = {"weight_bytes": weight_bytes, "bandwidth_bytes_per_s": BANDWIDTH,
              "single_sequence_limit_tokens_per_s": limit, "env": env, "rows": rows,
              "notes": notes}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"Weights: {weight_bytes / 1e9:.2f} GB; bandwidth limit for one sequence: "
        f"{num(limit, '.1f')} tokens/s (4.8 TB/s over the weight bytes).",
        "",
        "| system | seqs | tokens/s | vs peer | vs bandwidth | TTFT p50 ms | TPOT p50 ms "
        "| GPU mem MiB | load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['tokens_per_s']:.1f} "
            f"| {num(r['ratio_to_peer'], '.2f')} | {num(r['ratio_to_bandwidth'], '.3f')} "
            f"| {r['ttft_p50_ms']:.0f} | {r['tpot_p50_ms']:.1f} "
            f"| {num(r.get('gpu_mem_used_mib'), '.0f')} | {r.get('load_s', 0):.1f} |")
    lines += [""] + [f"- {n}" for n in notes]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
