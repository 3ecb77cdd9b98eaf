import json

import pytest

from tunesmith.data.formats import Example, Message, read_examples
from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_example, tokenize_examples

EOT = "<|im_end|>"


def _labelled_runs(tokenizer, tokenized) -> list[str]:
    """Decode each contiguous run of labelled tokens separately."""
    runs, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def _rendered_ids(tokenizer, example):
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in example.messages], tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


TURNS = [
    {"role": "system", "content": "You answer in French."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Bonjour", "weight": 0},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": " Merci, à bientôt 😀"},
]


@pytest.mark.parametrize(
    "name, content, columns, replies",
    [
        ("chat.jsonl", json.dumps({"messages": TURNS}), None, [" Merci, à bientôt 😀"]),
        ("pc.jsonl", json.dumps({"prompt": "2+2?", "completion": "4, of course."}), None, ["4, of course."]),
        ("al.json", json.dumps([{"instruction": "Add", "input": "2, 2", "output": "Four"}]), None, ["Four"]),
        (
            "e2e.csv",
            'mr,ref\n"name[Alimentum], area[city centre]",Alimentum is in the city centre.\n',
            {"prompt": "mr", "completion": "ref"},
            ["Alimentum is in the city centre."],
        ),
    ],
)
def test_labels_are_exactly_the_trained_replies_and_their_end_of_turn(
    smol_tokenizer, tmp_path, name, content, columns, replies
):
    path = tmp_path / name
    path.write_text(content + "\n", encoding="utf-8")
    example = read_examples(path, columns=columns).examples[0]
    tokenized = tokenize_example(smol_tokenizer, example, max_seq_len=4096)
    assert _labelled_runs(smol_tokenizer, tokenized) == [reply + EOT for reply in replies]
    # One tokenization of the whole rendered text: no drift at the turn boundaries.
    assert tokenized.input_ids == _rendered_ids(smol_tokenizer, example)
    assert tokenized.original_length == len(tokenized.input_ids)


def test_every_trained_turn_of_a_multi_turn_chat_is_labelled(smol_tokenizer):
    example = Example(
        1,
        (
            Message("user", "a"),
            Message("assistant", "first"),
            Message("user", "b"),
            Message("assistant", "second"),
        ),
    )
    tokenized = tokenize_example(smol_tokenizer, example, 4096)
    assert _labelled_runs(smol_tokenizer, tokenized) == ["first" + EOT, "second" + EOT]


def test_long_chat_keeps_its_first_tokens(smol_tokenizer):
    example = Example(5, (Message("user", "hi"), Message("assistant", "word " * 200)))
    whole = tokenize_example(smol_tokenizer, example, 4096)
    cut = tokenize_example(smol_tokenizer, example, 64)
    assert (cut.input_ids, cut.labels) == (whole.input_ids[:64], whole.labels[:64])
    assert (cut.line, cut.original_length) == (5, len(whole.input_ids))


def test_raw_text_is_packed_into_full_blocks_with_eos_between_texts(smol_tokenizer):
    texts = ["The cat sat on the mat.", "Dogs bark at night, mostly.", "Birds sing."]
    examples = [Example(line, text=t) for line, t in zip((1, 3, 7), texts, strict=True)]
    blocks = tokenize_examples(smol_tokenizer, examples, max_seq_len=5)
    eos = smol_tokenizer.eos_token_id
    stream = []
    for text in texts:
        stream += smol_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert [token for block in blocks for token in block.input_ids] == stream
    assert all(len(block.input_ids) == 5 for block in blocks[:-1]) and 0 < len(blocks[-1].input_ids) <= 5
    assert all(block.labels == block.input_ids for block in blocks)
    first_of_second = len(smol_tokenizer(texts[0], add_special_tokens=False)["input_ids"]) + 1
    first_of_third = first_of_second + len(smol_tokenizer(texts[1], add_special_tokens=False)["input_ids"]) + 1
    owners = [1 if b * 5 < first_of_second else 3 if b * 5 < first_of_third else 7 for b in range(len(blocks))]
    assert [block.line for block in blocks] == owners


def test_chat_renderer_renders_what_apply_chat_template_renders(smol_tokenizer, monkeypatch):
    """The compiled template is called directly only where it gives apply_chat_template's exact
    text; a template it renders differently (stood in for by a patched compiler) falls back."""
    import tunesmith.data.tokenize as tokenize

    example = Example(1, messages=[Message(m["role"], m["content"], m.get("weight", 1)) for m in TURNS])
    render = tokenize.chat_renderer(smol_tokenizer, example)
    assert render.__name__ == "direct"
    for end in range(1, len(TURNS) + 1):
        for prompt in (False, True):
            expected = smol_tokenizer.apply_chat_template(TURNS[:end], tokenize=False, add_generation_prompt=prompt)
            assert render(example, example.messages[:end], prompt) == expected

    class Shouting:
        def render(self, **context):
            return "HELLO"

    monkeypatch.setattr(tokenize, "_compile_jinja_template", lambda template: Shouting())
    fallback = tokenize.chat_renderer(smol_tokenizer, example)
    assert fallback.__name__ == "checked"
    assert tokenize_example(smol_tokenizer, example, 4096).input_ids == _rendered_ids(smol_tokenizer, example)
