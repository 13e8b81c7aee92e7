"""A random-weight Llama with the shapes of Llama-3-8B, in bf16, as a Hugging Face directory.

Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
generation_config.json. Weights: normal(0, 0.02) for every matrix (Hugging Face's Llama init),
ones for the norms, from a fixed seed; generated on the GPU with PyTorch when it is there (the
8B parameters take seconds), else with NumPy (tiny configurations, for tests on a CPU machine).

The tokenizer is synthetic but shaped like Llama 3's: byte-level BPE with Llama 3's
pre-tokenizer regex, 128000 regular tokens (the 256 bytes, then pairs and triples of printable
ASCII, every one reachable through a merge) and Llama 3's 256 special tokens at 128000-128255,
so that ids, the chat template and the end-of-generation tokens (128001, 128008, 128009) are
where Llama 3's are. Regular tokens other than the 256 bytes decode to ASCII, so a random
model's output is always complete text.

    python3 gen_model.py OUT_DIR [--config llama3-8b|tiny] [--seed 0] [--device cuda|cpu]
"""

import argparse
import json
import os
import struct
import sys

CONFIGS = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}
VOCAB = 128256
REGULAR = 128000
BOS, EOS_TEXT, EOM, EOT = 128000, 128001, 128008, 128009
STD = 0.02

CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
PRE_TOKENIZER_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def config_json(shape):
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=VOCAB,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
        hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16",
        attention_bias=False, mlp_bias=False, bos_token_id=BOS, eos_token_id=[EOS_TEXT, EOM, EOT],
        **shape,
    )


def tensor_shapes(c):
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head_dim = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    shapes = [("model.embed_tokens.weight", (VOCAB, h))]
    for layer in range(n):
        p = f"model.layers.{layer}"
        shapes += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (VOCAB, h))]
    return shapes


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class TorchSource:
    """bf16 tensors from PyTorch, on the GPU when there is one."""

    def __init__(self, seed, device):
        import torch
        self.torch = torch
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def bytes_of(self, shape):
        torch = self.torch
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(shape, generator=self.gen, device=self.device, dtype=torch.float32)
            t = (t * STD).to(torch.bfloat16)
        return t.contiguous().view(torch.int16).cpu().numpy().tobytes()


class NumpySource:
    """bf16 bit patterns from NumPy (round to nearest even)."""

    def __init__(self, seed):
        import numpy as np
        self.np = np
        self.rng = np.random.default_rng(seed)

    def bytes_of(self, shape):
        np = self.np
        if len(shape) == 1:
            x = np.ones(shape, dtype=np.float32)
        else:
            x = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)
        bits = x.view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()


def write_safetensors(path, shapes, source):
    """Writes the header first (offsets follow from the shapes), then each tensor as made."""
    header, offset = {}, 0
    for name, shape in shapes:
        size = numel(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in shapes:
            f.write(source.bytes_of(shape))
    os.replace(path + ".part", path)
    return offset


def bytes_to_unicode():
    """GPT-2's byte-to-character table, which byte-level BPE spells tokens in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def special_tokens():
    names = {BOS: "<|begin_of_text|>", EOS_TEXT: "<|end_of_text|>",
             128004: "<|finetune_right_pad_id|>", 128006: "<|start_header_id|>",
             128007: "<|end_header_id|>", EOM: "<|eom_id|>", EOT: "<|eot_id|>",
             128010: "<|python_tag|>"}
    reserved = 0
    out = []
    for i in range(REGULAR, VOCAB):
        if i not in names:
            names[i] = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
        out.append((i, names[i]))
    return out


def vocabulary():
    """(tokens in id order, merges): bytes, then printable pairs, then printable triples."""
    table = bytes_to_unicode()
    tokens = [table[b] for b in range(256)]
    printable = [table[b] for b in range(0x20, 0x7F)]
    merges = []
    pairs = []
    for a in printable:
        for b in printable:
            tokens.append(a + b)
            merges.append(f"{a} {b}")
            pairs.append(a + b)
    for pair in pairs:
        for c in printable:
            if len(tokens) == REGULAR:
                return tokens, merges
            tokens.append(pair + c)
            merges.append(f"{pair} {c}")
    raise AssertionError("not enough triples")


def tokenizer_json():
    tokens, merges = vocabulary()
    added = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False,
                  normalized=False, special=True) for i, t in special_tokens()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_TOKENIZER_REGEX},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--config", default="llama3-8b", choices=sorted(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    shape = CONFIGS[args.config]
    write_json(os.path.join(args.out, "config.json"), config_json(shape))
    write_json(os.path.join(args.out, "generation_config.json"),
               dict(bos_token_id=BOS, eos_token_id=[EOS_TEXT, EOM, EOT], do_sample=False))
    write_json(os.path.join(args.out, "tokenizer.json"), tokenizer_json())
    write_json(os.path.join(args.out, "tokenizer_config.json"), dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>",
        add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=True,
        model_max_length=8192, tokenizer_class="PreTrainedTokenizerFast",
        chat_template=CHAT_TEMPLATE))
    try:
        import torch
        device = args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu"
        source = TorchSource(args.seed, device)
        how = f"torch on {device}"
    except ImportError:
        source = NumpySource(args.seed)
        how = "numpy"
    weights = os.path.join(args.out, "model.safetensors")
    size = write_safetensors(weights, tensor_shapes(shape), source)
    print(json.dumps({"weights": weights, "weight_bytes": size, "generator": how}))


if __name__ == "__main__":
    sys.exit(main())
