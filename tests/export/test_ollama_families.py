"""Ollama's template per family: the Modelfile's Go template writes a chat as the family's Jinja
template does (ChatML with a default system, Llama 3's headers, Gemma's turns with the system folded
into the first user turn, Phi-3's tags with an EOS after a closed chat)."""

import copy

import pytest

from tunesmith.export.ollama import chat_format, modelfile

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA3 = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    '{%- else -%}{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}'
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
GEMMA_GO = (
    "{{ $open := false }}{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{ if eq .Role "system" }}<start_of_turn>user\n{{ .Content }}\n\n{{ $open = true }}'
    '{{ else if eq .Role "user" }}{{ if not $open }}<start_of_turn>user\n{{ end }}{{ $open = false }}'
    "{{ .Content }}<end_of_turn>\n"
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}'
    '{{ if and $last (ne .Role "assistant") }}<start_of_turn>model\n{{ end }}{{ end }}'
)
# family, template, bos, eos, what the Modelfile stops on, what the template writes first (BOS not added)
FAMILIES = [
    ("qwen2.5", QWEN25, None, "<|im_end|>", ["<|im_end|>"], "{{ range"),
    ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ["<|eot_id|>"], "<|begin_of_text|>{{ range"),
    ("gemma3", GEMMA3, "<bos>", "<eos>", ["<end_of_turn>", "<eos>"], "<bos>{{ $open := false }}"),
    ("phi3", PHI3, None, "<|endoftext|>", ["<|end|>", "<|endoftext|>"], "{{ range"),
]
CHATS = [
    [("user", "name[Zizzi]"), ("assistant", "Zizzi is a pub."), ("user", "name[Aromi]")],
    [("system", "Describe restaurants."), ("user", "name[Zizzi]"), ("assistant", "A pub."), ("user", "name[Aromi]")],
]


def family_tokenizer(base, template: str, bos: str | None, eos: str):
    tokenizer = copy.deepcopy(base)
    tokenizer.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    if not bos:
        tokenizer.bos_token = None
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize(("family", "template", "bos", "eos", "stops", "opening"), FAMILIES)
@pytest.mark.parametrize("chat", CHATS, ids=["no-system", "system"])
def test_ollama_template_writes_each_familys_chat_as_its_jinja_template(
    byte_level_tokenizer, family, template, bos, eos, stops, opening, chat
):
    tokenizer = family_tokenizer(byte_level_tokenizer, template, bos, eos)
    pieces = chat_format(tokenizer)
    for generation_prompt in (True, False):
        expected = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in chat], tokenize=False, add_generation_prompt=generation_prompt
        )
        assert pieces.render(chat, generation_prompt) == expected
    text = modelfile(pieces, tokenizer, "model.gguf", None).splitlines()
    assert text[1].startswith(f'TEMPLATE """{opening}')
    assert [line for line in text if line.startswith("PARAMETER stop")] == [f'PARAMETER stop "{s}"' for s in stops]


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn(byte_level_tokenizer):
    pieces = chat_format(family_tokenizer(byte_level_tokenizer, GEMMA3, "<bos>", "<eos>"))
    assert pieces.system_opens_user
    assert pieces.go_template(bos_added=False) == "<bos>" + GEMMA_GO
    # llama.cpp adds BOS itself when the GGUF says the tokenizer does: not a second one from the template
    assert pieces.go_template(bos_added=True) == GEMMA_GO
