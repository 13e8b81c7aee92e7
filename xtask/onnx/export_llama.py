#!/usr/bin/env python3
"""Exports a Llama-family decoder as a decoder-with-past ONNX model, laid out like Hugging Face
Optimum and transformers.js exports, so that llm-pipeline's ONNX Runtime backend can be tested
without downloading anything from a model hub.

Two sources:
  gguf   the weights of a GGUF file (read with the PyPI `gguf` package, dequantized to f32);
         the tokenizer.json is built from the GGUF's byte-level BPE vocabulary and merges.
  tiny   random weights for a tiny configuration (fast tests), with a small byte-level BPE.

The graph uses plain ONNX operators at opset 17:
  inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
           position_ids [batch, seq] int64, past_key_values.{i}.key/value [batch, kv, past, hd]
  outputs  logits [batch, seq, vocab], present.{i}.key/value [batch, kv, past+seq, hd]
The attention mask may have holes (0 columns anywhere): a query at column `past + s` attends
key column `j` when `j <= past + s` and `attention_mask[b, j] == 1`. Rotary embeddings use the
Hugging Face (rotate-half) layout; GGUF Q/K rows, permuted by llama.cpp's converter for its
interleaved rope, are permuted back.

The GGUF export also takes `logits_index` [batch, n] int64, the columns of each row's new tokens
whose logits are computed (its `logits` are then [batch, n, vocab]): a prompt's step computes the
LM head for the rows the engine samples from, not for every prompt token. The tiny export keeps
the plain interface above, as Optimum's exports have it.

The tiny model also gets `model_fp16.onnx`: the same weights with float16 KV and logits.
With --int8, the directory also gets `model_quantized.onnx`: the same graph with its MatMul
weights quantized to int8 by ONNX Runtime's dynamic quantization (what Optimum's
`ORTQuantizer` and transformers.js' `model_quantized.onnx` files are), for `USE_8BIT`.

Usage:
  export_llama.py gguf MODEL.gguf OUT_DIR [--int8]
  export_llama.py tiny OUT_DIR [--seed N] [--int8]
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# ----------------------------------------------------------------------------------------------
# Graph


class Graph:
    """A small helper that names nodes and collects initializers."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(self, op_type, inputs, hint=None, outputs=None, **attrs):
        out = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, out, **attrs))
        return out[0] if len(out) == 1 else out


def rms_norm(g, x, weight, eps):
    sq = g.op("Mul", [x, x])
    mean = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    eps_c = g.const("eps", np.array(eps, dtype=np.float32))
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [mean, eps_c])])])
    return g.op("Mul", [g.op("Mul", [x, inv]), weight])


def linear(g, x, w_t):
    """x @ w_t, where w_t is stored [in, out]."""
    return g.op("MatMul", [x, w_t])


def rotate(g, x, cos, sin, half):
    """x * cos + rotate_half(x) * sin, x [b, h, s, hd]."""
    x1, x2 = g.op("Split", [x, g.const("split", np.array([half, half], dtype=np.int64))],
                  outputs=[g.name("x1"), g.name("x2")], axis=-1)
    rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def build_model(cfg, weights, io_dtype=TensorProto.FLOAT, logits_index=False):
    """cfg: dict as in config.json; weights: HF-named f32 arrays ([out, in] linear layers).

    io_dtype FLOAT16 declares the KV inputs/outputs and the logits as float16 (computing in
    float32 inside, with casts at the edges), the interface of a half-precision export.
    logits_index adds that input: logits only at the given columns of each row."""
    g = Graph()
    layers = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    hd = hidden // heads
    rep = heads // kv_heads
    vocab = cfg["vocab_size"]
    eps = cfg["rms_norm_eps"]
    theta = cfg["rope_theta"]

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                      ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    logits_len = "sequence_length"
    if logits_index:
        logits_len = "logits_length"
        inputs.append(helper.make_tensor_value_info("logits_index", TensorProto.INT64,
                                                    ["batch_size", logits_len]))
    outputs = [
        helper.make_tensor_value_info("logits", io_dtype, ["batch_size", logits_len, vocab]),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", io_dtype,
                ["batch_size", kv_heads, "past_sequence_length", hd]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", io_dtype,
                ["batch_size", kv_heads, "total_sequence_length", hd]))

    embed = g.const("embed_tokens", weights["model.embed_tokens.weight"])
    x = g.op("Gather", [embed, "input_ids"], axis=0)  # [b, s, hidden]

    # Rotary tables from position_ids: [b, 1, s, hd].
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    inv_freq = g.const("inv_freq", inv_freq.astype(np.float32).reshape(1, 1, hd // 2))
    pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT),
                             g.const("ax", np.array([-1], dtype=np.int64))])
    freqs = g.op("Mul", [pos, inv_freq])
    emb = g.op("Concat", [freqs, freqs], axis=-1)
    ax1 = g.const("ax", np.array([1], dtype=np.int64))
    cos = g.op("Unsqueeze", [g.op("Cos", [emb]), ax1])
    sin = g.op("Unsqueeze", [g.op("Sin", [emb]), ax1])

    # Additive attention bias [b, 1, 1, s, t]: causal in columns, and attention_mask.
    t_len = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const("i1", np.array(1, dtype=np.int64))],
                 axis=0)
    s_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("i1", np.array(1, dtype=np.int64))],
                 axis=0)
    zero = g.const("zero", np.array(0, dtype=np.int64))
    one = g.const("one", np.array(1, dtype=np.int64))
    past_len = g.op("Sub", [t_len, s_len])
    keys = g.op("Range", [zero, t_len, one])  # [t]
    queries = g.op("Add", [g.op("Range", [zero, s_len, one]), past_len])  # [s]
    queries = g.op("Unsqueeze", [queries, g.const("ax", np.array([1], dtype=np.int64))])  # [s, 1]
    causal = g.op("LessOrEqual", [keys, queries])  # [s, t]
    valid = g.op("Equal", ["attention_mask", one])  # [b, t]
    valid = g.op("Unsqueeze", [valid, g.const("ax", np.array([1, 2, 3], dtype=np.int64))])  # [b,1,1,1,t]
    allowed = g.op("And", [causal, valid])  # [b, 1, 1, s, t]
    bias = g.op("Where", [allowed, g.const("zero_f", np.array(0.0, dtype=np.float32)),
                          g.const("neg", np.array(np.finfo(np.float32).min, dtype=np.float32))])
    scale = g.const("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))

    q_shape = g.const("q_shape", np.array([0, 0, heads, hd], dtype=np.int64))
    kv_shape = g.const("kv_shape", np.array([0, 0, kv_heads, hd], dtype=np.int64))
    group_shape = g.const("group_shape", np.array([0, kv_heads, rep, -1, hd], dtype=np.int64))
    ax2 = g.const("ax", np.array([2], dtype=np.int64))
    out_shape = g.const("out_shape", np.array([0, 0, hidden], dtype=np.int64))

    for i in range(layers):
        p = f"model.layers.{i}."
        w = lambda n: g.const(n.replace(".", "_"), weights[p + n].T.copy())
        h = rms_norm(g, x, g.const("ln1", weights[p + "input_layernorm.weight"]), eps)
        q = g.op("Transpose", [g.op("Reshape", [linear(g, h, w("self_attn.q_proj.weight")), q_shape])],
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(g, h, w("self_attn.k_proj.weight")), kv_shape])],
                 perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [linear(g, h, w("self_attn.v_proj.weight")), kv_shape])],
                 perm=[0, 2, 1, 3])
        q = rotate(g, q, cos, sin, hd // 2)
        k = rotate(g, k, cos, sin, hd // 2)
        if io_dtype == TensorProto.FLOAT:
            k_all = g.op("Concat", [f"past_key_values.{i}.key", k], axis=2, outputs=[f"present.{i}.key"])
            v_all = g.op("Concat", [f"past_key_values.{i}.value", v], axis=2,
                         outputs=[f"present.{i}.value"])
        else:
            # Stored in half precision: round the new entries first, so that the attention of
            # this step sees the same values as the next step's will.
            cast = lambda t: g.op("Cast", [g.op("Cast", [t], to=io_dtype)], to=TensorProto.FLOAT)
            past_k = g.op("Cast", [f"past_key_values.{i}.key"], to=TensorProto.FLOAT)
            past_v = g.op("Cast", [f"past_key_values.{i}.value"], to=TensorProto.FLOAT)
            k_all = g.op("Concat", [past_k, cast(k)], axis=2)
            v_all = g.op("Concat", [past_v, cast(v)], axis=2)
            g.op("Cast", [k_all], to=io_dtype, outputs=[f"present.{i}.key"])
            g.op("Cast", [v_all], to=io_dtype, outputs=[f"present.{i}.value"])
        # Grouped-query attention by broadcasting: q [b, kv, rep, s, hd], k/v [b, kv, 1, t, hd].
        qg = g.op("Reshape", [q, group_shape])
        kg = g.op("Unsqueeze", [k_all, ax2])
        vg = g.op("Unsqueeze", [v_all, ax2])
        scores = g.op("MatMul", [qg, g.op("Transpose", [kg], perm=[0, 1, 2, 4, 3])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("MatMul", [probs, vg])  # [b, kv, rep, s, hd]
        ctx = g.op("Reshape", [ctx, g.const("ctx_shape", np.array([0, heads, -1, hd], dtype=np.int64))])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), out_shape])
        x = g.op("Add", [x, linear(g, ctx, w("self_attn.o_proj.weight"))])
        h = rms_norm(g, x, g.const("ln2", weights[p + "post_attention_layernorm.weight"]), eps)
        gate = linear(g, h, w("mlp.gate_proj.weight"))
        up = linear(g, h, w("mlp.up_proj.weight"))
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        x = g.op("Add", [x, linear(g, g.op("Mul", [act, up]), w("mlp.down_proj.weight"))])

    if logits_index:
        # [b, n, 1] column indices, one gather per row: [b, s, hidden] -> [b, n, hidden].
        idx = g.op("Unsqueeze", ["logits_index", g.const("ax", np.array([2], dtype=np.int64))])
        x = g.op("GatherND", [x, idx], batch_dims=1)
    x = rms_norm(g, x, g.const("norm", weights["model.norm.weight"]), eps)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    if io_dtype == TensorProto.FLOAT:
        g.op("MatMul", [x, g.const("lm_head", head.T.copy())], outputs=["logits"])
    else:
        g.op("Cast", [g.op("MatMul", [x, g.const("lm_head", head.T.copy())])], to=io_dtype,
             outputs=["logits"])

    graph = helper.make_graph(g.nodes, "decoder_with_past", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="llm-pipeline xtask export_llama.py")
    model.ir_version = 8
    return model


def save_model(model, out_dir, name="model.onnx"):
    path = os.path.join(out_dir, name)
    # Weights over 2 GiB would need external data; the fixtures are far below that.
    onnx.save_model(model, path)
    onnx.checker.check_model(path)
    return path


def quantize_int8(out_dir):
    """Writes model_quantized.onnx: MatMul weights as int8 per output channel, activations
    quantized dynamically. Per-channel scales matter for a model as small as SmolLM2-135M: with
    one scale per tensor its greedy answer to "What is the capital of France?" loses Paris."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(os.path.join(out_dir, "model.onnx"), os.path.join(out_dir, "model_quantized.onnx"),
                     op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, per_channel=True)


# ----------------------------------------------------------------------------------------------
# GGUF


def unpermute(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf's `permute` of Q/K rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def from_gguf(path, out_dir):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)

    def field(name, default=None):
        f = r.fields.get(name)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        sys.exit(f"{path}: architecture {arch!r} is not supported (llama only)")
    heads = int(field("llama.attention.head_count"))
    kv_heads = int(field("llama.attention.head_count_kv", heads))
    tensors = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
        tensors[t.name] = a.reshape(shape)
    layers = int(field("llama.block_count"))
    vocab_tokens = field("tokenizer.ggml.tokens")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(field("llama.embedding_length")),
        "intermediate_size": int(field("llama.feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(field("llama.embedding_length")) // heads,
        "max_position_embeddings": int(field("llama.context_length")),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field("llama.rope.freq_base", 10000.0)),
        "vocab_size": len(vocab_tokens),
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float32",
    }
    w = {"model.embed_tokens.weight": tensors["token_embd.weight"],
         "model.norm.weight": tensors["output_norm.weight"]}
    if "output.weight" in tensors:
        w["lm_head.weight"] = tensors["output.weight"]
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(layers):
        for g_name, hf in names.items():
            a = tensors[f"blk.{i}.{g_name}.weight"]
            if g_name == "attn_q":
                a = unpermute(a, heads)
            elif g_name == "attn_k":
                a = unpermute(a, kv_heads)
            w[f"model.layers.{i}.{hf}.weight"] = a

    tokens = list(vocab_tokens)
    types = list(field("tokenizer.ggml.token_type"))
    merges = list(field("tokenizer.ggml.merges"))
    pre = field("tokenizer.ggml.pre", "default")
    tokenizer = byte_level_bpe(tokens, types, merges, isolate_digits=pre in ("smollm", "starcoder"))
    bos, eos = tokens[cfg["bos_token_id"]], tokens[cfg["eos_token_id"]]
    template = field("tokenizer.chat_template")
    write_dir(out_dir, cfg, build_model(cfg, w, logits_index=True), tokenizer,
              {"bos_token": bos, "eos_token": eos, "chat_template": template,
               "add_bos_token": bool(field("tokenizer.ggml.add_bos_token", False))})
    # Marks an export with `logits_index`: the xtask exports again a cached one without it.
    with open(os.path.join(out_dir, "logits_index"), "w") as f:
        f.write("logits_index [batch, n] int64 selects the columns whose logits are computed\n")


def byte_level_bpe(tokens, types, merges, isolate_digits):
    """A Hugging Face tokenizer.json for a GPT-2 style byte-level BPE vocabulary."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]  # 3: control
    pre = [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
    if isolate_digits:
        pre.insert(0, {"type": "Digits", "individual_digits": True})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


# ----------------------------------------------------------------------------------------------
# Tiny random model


TINY_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny(out_dir, seed):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = bytes_to_unicode()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "e r", "a n", "o n", "Ġ a", "r e", "Ġ s"]
    merged = ["".join(m.split(" ")) for m in merges]
    tokens = specials + byte_tokens + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": len(tokens), "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32",
    }
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    rnd = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
    w = {"model.embed_tokens.weight": rnd(v, h), "lm_head.weight": rnd(v, h),
         "model.norm.weight": (1 + rnd(h)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": (1 + rnd(h)).astype(np.float32),
                  p + "post_attention_layernorm.weight": (1 + rnd(h)).astype(np.float32),
                  p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                  p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                  p + "mlp.gate_proj.weight": rnd(f, h), p + "mlp.up_proj.weight": rnd(f, h),
                  p + "mlp.down_proj.weight": rnd(h, f)})
    tokenizer = byte_level_bpe(tokens, types, merges, isolate_digits=False)
    write_dir(out_dir, cfg, build_model(cfg, w), tokenizer,
              {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": TINY_TEMPLATE,
               "add_bos_token": False})
    # The same weights with a float16 interface, for the backend's half-precision path.
    save_model(build_model(cfg, w, TensorProto.FLOAT16), out_dir, "model_fp16.onnx")


# ----------------------------------------------------------------------------------------------


def write_dir(out_dir, cfg, model, tokenizer, tok_cfg):
    os.makedirs(out_dir, exist_ok=True)
    save_model(model, out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True)
    a = sub.add_parser("gguf")
    a.add_argument("gguf")
    a.add_argument("out_dir")
    a.add_argument("--int8", action="store_true")
    b = sub.add_parser("tiny")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--int8", action="store_true")
    args = ap.parse_args()
    if args.source == "gguf":
        from_gguf(args.gguf, args.out_dir)
    else:
        tiny(args.out_dir, args.seed)
    if args.int8:
        quantize_int8(args.out_dir)


if __name__ == "__main__":
    main()
