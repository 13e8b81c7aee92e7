"""Converts gen_model.py's directory to a bf16 GGUF for llama.cpp, with the `gguf` package.

Only what gen_model.py writes is handled (one model.safetensors in BF16, a Llama config, a
byte-level BPE tokenizer.json): this is llama.cpp's convert_hf_to_gguf.py cut down to one
model family, so that the GPU machine needs no llama.cpp checkout. As there, the Q and K rows
are permuted to llama.cpp's interleaved RoPE layout and the norms are stored in f32.

    python3 to_gguf.py MODEL_DIR OUT.gguf
"""

import json
import os
import struct
import sys

import numpy as np
import gguf

FILE_TYPE_BF16 = 32  # llama_ftype LLAMA_FTYPE_MOSTLY_BF16


def read_safetensors(path):
    """name -> (shape, uint16 bf16 bit patterns, memory-mapped)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", f"{name}: {info['dtype']}"
        begin, end = info["data_offsets"]
        out[name] = (info["shape"], data[begin:end].view("<u2").reshape(info["shape"]))
    return out


def permute(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half to interleaved RoPE rows."""
    return np.ascontiguousarray(
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape))


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def tokenizer(model_dir):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        t = json.load(f)
    vocab = t["model"]["vocab"]
    size = len(vocab) + len(t["added_tokens"])
    tokens = [""] * size
    types = [gguf.TokenType.NORMAL] * size
    for text, i in vocab.items():
        tokens[i] = text
    for a in t["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
    return tokens, types, merges


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c["hidden_size"] // heads

    w = gguf.GGUFWriter(out + ".part", "llama")
    w.add_name("random-llama3-8b")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(FILE_TYPE_BF16)

    tokens, types, merges = tokenizer(model_dir)
    ids = {t: i for i, t in enumerate(tokens)}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids[tc["bos_token"]])
    w.add_eos_token_id(ids[tc["eos_token"]])
    w.add_pad_token_id(ids[tc["pad_token"]])
    w.add_add_bos_token(False)
    w.add_chat_template(tc["chat_template"])

    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for name, (shape, bits) in tensors.items():
        if name == "model.embed_tokens.weight":
            new = "token_embd.weight"
        elif name == "model.norm.weight":
            new = "output_norm.weight"
        elif name == "lm_head.weight":
            new = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            new = f"blk.{layer}.{names[rest.removesuffix('.weight')]}.weight"
        if new.endswith("attn_q.weight"):
            bits = permute(bits, heads)
        elif new.endswith("attn_k.weight"):
            bits = permute(bits, kv_heads)
        if len(shape) == 1:
            w.add_tensor(new, bf16_to_f32(bits))
        else:
            w.add_tensor(new, bits, raw_dtype=gguf.GGMLQuantizationType.BF16)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out + ".part", out)
    print(json.dumps({"gguf": out, "bytes": os.path.getsize(out)}))


if __name__ == "__main__":
    main()
