"""Writing small real GGUF files for the tests: a transformers Llama (or Qwen2) model's weights in
llama.cpp's layout (tensor names; a Llama's q/k rows permuted as llama.cpp's converter does) with
the tokenizer of the bundled SmolLM2 GGUF, so that a GGUF file that is not the bundled one, of the
bundled model's family or of another, can be loaded as an agent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    # llama.cpp stores q/k with the two rotary halves of each head interleaved
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, index, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)  # a weight, or a bias (Qwen2's q/k/v)
    return f"blk.{index}.{_LAYER_NAMES[module]}.{kind}"


def write_gguf(model, path: Path, tokenizer_gguf: Path, name: str = "tiny-test-llama") -> Path:
    """Write ``model`` (a LlamaForCausalLM or Qwen2ForCausalLM whose vocabulary is the tokenizer's)
    as a float32 GGUF of its family."""
    from gguf import GGUFReader, GGUFWriter

    config = model.config
    llama = config.model_type == "llama"
    tok = GGUFReader(tokenizer_gguf).fields
    writer = GGUFWriter(str(path), config.model_type)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(
        float(config.rope_parameters["rope_theta"]) if getattr(config, "rope_parameters", None) else 10000.0
    )
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model(tok["tokenizer.ggml.model"].contents())
    writer.add_tokenizer_pre(tok["tokenizer.ggml.pre"].contents())
    writer.add_token_list(tok["tokenizer.ggml.tokens"].contents())
    writer.add_token_types(tok["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(tok["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"].contents())
    writer.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"].contents())
    writer.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"].contents())
    writer.add_add_bos_token(False)
    # no chat template: like a base model, the agent gets its prompt as plain text
    for hf_name, weight in model.state_dict().items():
        weight = weight.detach().float()
        if llama and hf_name.endswith("q_proj.weight"):
            weight = _llama_cpp_rows(weight, config.num_attention_heads)
        elif llama and hf_name.endswith("k_proj.weight"):
            weight = _llama_cpp_rows(weight, config.num_key_value_heads)
        writer.add_tensor(gguf_name(hf_name), np.ascontiguousarray(weight.numpy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def tiny_qwen2(vocab_size: int, seed: int = 0, hidden: int = 32, heads: int = 4):
    """A tiny Qwen2 (another family than the bundled model's: q/k/v biases, no row permutation)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random biases, so that a bias lost on the way would show
        for name, tensor in model.named_parameters():
            if name.endswith("bias"):
                tensor.normal_()
    return model
