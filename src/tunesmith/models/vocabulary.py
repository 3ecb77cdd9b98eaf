"""A config's chat template and added tokens, applied once where its model or tokenizer is loaded.

`data.chat_template` makes a base model (no template) a chat model: the built-in ChatML, or a
Jinja file. Tokens the template needs and the vocabulary lacks become special tokens; the end of
an assistant turn becomes eos, so labels cover it (the model learns to stop) and generation stops
at it. `tokenizer.add_tokens` adds domain words as normal tokens. Every new embedding row starts
as a mean: of all old rows for template tokens (no piece of text means anything like them), of the
old pieces' rows for a domain word (what the model already read in their place).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.chat.render import adds_bos
from tunesmith.config import Config, DataConfig, TokenizerConfig
from tunesmith.errors import TunesmithError
from tunesmith.models import LoadedModel, load_model, load_tokenizer

MODEL, CHATML = "model", "chatml"
# No mention of tools: chat/render.py gives it the fallback tool rendering (system and user text).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
_LITERAL = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>")
_PROBE_REPLY = "TUNESMITH_PROBE_REPLY"


@dataclass
class Added:
    """What a config added to a tokenizer: special token ids, and each domain word's id with its old pieces."""

    special: list[int] = field(default_factory=list)
    words: dict[int, list[int]] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return sorted(set(self.special) | set(self.words))


def chat_template(data: DataConfig) -> tuple[str | None, list[str]]:
    """(the template text, or None for the model's own; the special tokens it needs)."""
    value = data.chat_template
    if value == MODEL:
        return None, []
    if value == CHATML:
        return CHATML_TEMPLATE, list(CHATML_TOKENS)
    path = Path(value).expanduser()
    if not path.is_file():
        raise TunesmithError(f"data.chat_template: {value!r} is neither `model`, `chatml` nor a Jinja file that exists")
    text = path.read_text()
    tokens = data.chat_template_tokens if data.chat_template_tokens is not None else _LITERAL.findall(text)
    return text, list(dict.fromkeys(tokens))


def domain_words(vocabulary: TokenizerConfig) -> list[str]:
    value = vocabulary.add_tokens
    if value is None:
        return []
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_file():
            raise TunesmithError(f"tokenizer.add_tokens: file not found: {path}")
        value = [line.strip() for line in path.read_text().splitlines()]
    return list(dict.fromkeys(word for word in value if word))


def add_domain_words(tokenizer, vocabulary: TokenizerConfig) -> Added:
    """Add the `tokenizer.add_tokens` words `tokenizer` lacks as normal tokens (idempotent: a saved
    run's tokenizer already has them); each new id with the pieces the tokenizer split the word into."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new_words = [w for w in domain_words(vocabulary) if w not in vocab]
    pieces = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in new_words}
    if not new_words:
        return Added()
    # Whole words only: Hugging Face matches an added token anywhere, so the medical abbreviation
    # "lv" would cut "involving" into in ##vo lv ing (245 of 400 medical test abstracts changed so).
    tokenizer.add_tokens([AddedToken(w, single_word=True) for w in new_words])
    return Added(words={tokenizer.convert_tokens_to_ids(w): pieces[w] for w in new_words})


def extend_tokenizer(tokenizer, data: DataConfig, vocabulary: TokenizerConfig | None = None) -> Added:
    """Set the config's template and add its tokens to `tokenizer` (idempotent: a saved run's tokenizer
    already has them)."""
    template, specials = chat_template(data)
    added = add_domain_words(tokenizer, vocabulary or TokenizerConfig())
    vocab = tokenizer.get_vocab()
    if template is None:
        return added
    missing = [t for t in specials if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        added.special = tokenizer.convert_tokens_to_ids(missing)
    tokenizer.chat_template = _with_bos(tokenizer, template) if data.chat_template == CHATML else template
    end = _end_of_turn(tokenizer, specials)
    if end is not None:
        tokenizer.eos_token = end
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added


def _with_bos(tokenizer, template: str) -> str:
    # ChatML writes no BOS, and rendered chats are tokenized without special tokens: for a model that
    # wants one, the template writes it first, as those models' own templates do.
    return "{{- bos_token -}}" + template if adds_bos(tokenizer) else template


def _end_of_turn(tokenizer, specials: list[str]) -> str | None:
    """The first special token the template writes after an assistant reply, if any."""
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE_REPLY}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception as error:  # a user's Jinja file: any template error is theirs to fix
        raise TunesmithError(f"data.chat_template: the template fails on a plain chat: {error}") from error
    after = text[text.find(_PROBE_REPLY) + len(_PROBE_REPLY) :]
    found = [(after.find(t), t) for t in specials if t in after]
    return min(found)[1] if found else None


def grow_embeddings(model, added: Added, old_rows: int) -> None:
    """Rows for the added ids (the embedding and an untied head grow to fit): the mean of the old rows;
    an output bias (BERT's MLM head) gets the same mean of its entries."""
    import torch

    if not added.ids:
        return
    rows = model.get_input_embeddings().weight.shape[0]
    needed = max(added.ids) + 1
    if needed > rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
    if head is not None and getattr(head, "bias", None) is not None:
        tables.append(head.bias)
    with torch.no_grad():
        for table in tables:
            mean = table[:old_rows].mean(dim=0)
            for token in added.special:
                table[token] = mean
            for token, pieces in added.words.items():
                table[token] = table[pieces].mean(dim=0)


def load_tokenizer_for(model: str, data: DataConfig, vocabulary: TokenizerConfig | None = None):
    """The tokenizer a config renders and tokenizes with."""
    tokenizer = load_tokenizer(model, require_template=data.chat_template == MODEL)
    extend_tokenizer(tokenizer, data, vocabulary)
    return tokenizer


def load_model_for(cfg: Config, dtype: str = "float32") -> LoadedModel:
    """The config's model and tokenizer with its template and added tokens; `added_ids` lists the new rows."""
    loaded = load_model(cfg.model, dtype, require_template=cfg.data.chat_template == MODEL)
    old_rows = len(loaded.tokenizer)
    added = extend_tokenizer(loaded.tokenizer, cfg.data, cfg.tokenizer)
    grow_embeddings(loaded.model, added, old_rows)
    if cfg.data.chat_template != MODEL:
        # Saved with merged/: generate() of transformers users stops at the template's end of turn too.
        for settings in (loaded.model.config, loaded.model.generation_config):
            if settings is not None:
                settings.eos_token_id = loaded.tokenizer.eos_token_id
    loaded.added_ids = added.ids
    return loaded
