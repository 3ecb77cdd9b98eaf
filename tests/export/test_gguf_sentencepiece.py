"""The SentencePiece-style vocabulary (Llama 2, TinyLlama, Mistral): byte fallback, U+2581 word
starts, no pre-tokenizer. Built here from a BPE trained on shipped text, with a Llama 2 layout."""

import json

import gguf
import pytest
import torch
from gguf_checks import REPO, load_gguf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from tunesmith.export.gguf import write_model_gguf
from tunesmith.models import tokenizer_from_gguf

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Past the tokenizer's 959 tokens: rows a runtime must see as unused.
MODEL_ROWS = 1024


@pytest.fixture(scope="module")
def llama2_style(tmp_path_factory):
    rows = (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()
    texts = [json.loads(line)["completion"] for line in rows]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(texts[:2000], trainers.BpeTrainer(vocab_size=700, show_progress=False))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    # Llama 2's layout: <unk> <s> </s>, the 256 byte tokens, then the learned pieces.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges)
    tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("llama2-style")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=MODEL_ROWS, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = write_model_gguf(folder, folder / "model-f32.gguf", "f32", "llama2-style")
    return folder, path, texts[2000:2300] + ["Café Rouge, £20-25 ☕ near 日本"]


# transformers' GGUF reader, and tunesmith's (the same vocabulary, the splitting set from tokenizer.ggml.pre).
READERS = {
    "transformers": lambda path: AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
    "tunesmith": tokenizer_from_gguf,
}


@pytest.mark.parametrize("reader", READERS)
def test_sentencepiece_vocabulary_reads_back_to_the_same_ids(llama2_style, reader):
    folder, path, lines = llama2_style
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = READERS[reader](path)
    assert [theirs(line).input_ids for line in lines] == [ours(line).input_ids for line in lines]
    chat = [{"role": "user", "content": lines[-1]}]
    assert theirs.apply_chat_template(chat, add_generation_prompt=True) == ours.apply_chat_template(
        chat, add_generation_prompt=True
    )
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[:4] == [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.BYTE]
    assert types[-1] == gguf.TokenType.UNUSED and len(types) == MODEL_ROWS


def test_untied_output_layer_round_trips(llama2_style):
    folder, path, _ = llama2_style
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([list(range(3, 67))])
    with torch.no_grad():
        assert (load_gguf(path)(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max() <= 1e-4
