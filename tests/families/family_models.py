"""Tiny random models of each family (transformers configs, 2 layers, hidden 64): the family's own
features are on and strong enough to matter (a sliding window shorter than the examples, soft-caps
that bend random scores, q/k-norms, GQA, tied and untied heads, fused projections)."""

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 256
WINDOW = 4  # shorter than every example the tests use
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    # Larger than pretrained-like 0.02, so scores and logits reach the soft-caps.
    initializer_range=0.2,
)
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, hidden_activation="gelu_pytorch_tanh")

FAMILIES = {
    "llama3": lambda **ids: LlamaConfig(**_COMMON | ids, rope_theta=500000.0, tie_word_embeddings=False),
    "qwen2": lambda **ids: Qwen2Config(**_COMMON | ids, tie_word_embeddings=True),
    "qwen3": lambda **ids: Qwen3Config(**_COMMON | ids, head_dim=16, tie_word_embeddings=True),
    "mistral": lambda **ids: MistralConfig(**_COMMON | ids, sliding_window=WINDOW, tie_word_embeddings=False),
    "gemma2": lambda **ids: Gemma2Config(
        **_COMMON | ids, **_GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, tie_word_embeddings=True
    ),
    "gemma3": lambda **ids: Gemma3TextConfig(
        **_COMMON | ids, **_GEMMA, layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True
    ),
    "phi3": lambda **ids: Phi3Config(**_COMMON | ids, tie_word_embeddings=False),
}


def tiny_model(family: str, **ids):
    """The family's tiny model, float32, random weights from a fixed seed; `ids` replace the vocabulary
    size and the special token ids (another tokenizer's)."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(FAMILIES[family](**ids), dtype=torch.float32)
