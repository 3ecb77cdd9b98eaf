"""`--to ollama`: the GGUF plus a Modelfile whose Go template writes chats as training did."""

import pytest
from transformers import AutoTokenizer

from tunesmith.errors import TunesmithError
from tunesmith.export import export_run
from tunesmith.export.ollama import chat_format, modelfile

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_TEMPLATE = (
    "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}'
    '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}'
)
# Llama 2 puts the system prompt inside the first user turn: not prefix + content + suffix.
LLAMA2_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ '<<SYS>>' + m['content'] + '<</SYS>>' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
)


@pytest.fixture
def tokenizer(tiny_run):
    return AutoTokenizer.from_pretrained(tiny_run / "merged")


def test_chat_pieces_reproduce_the_jinja_template(tokenizer):
    pieces = chat_format(tokenizer)
    assert pieces.default_system == SMOL_DEFAULT_SYSTEM
    assert pieces.go_template() == CHATML_TEMPLATE
    chat = [("user", "name[Zizzi]"), ("assistant", "Zizzi is a pub."), ("user", "name[Aromi]")]
    expected = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in chat], tokenize=False, add_generation_prompt=True
    )
    assert pieces.render(chat, generation_prompt=True) == expected


# system prompt of the run (data.system), SYSTEM line of the Modelfile
SYSTEMS = [
    (None, f'SYSTEM """{SMOL_DEFAULT_SYSTEM}"""'),
    ("Describe restaurants.", 'SYSTEM """Describe restaurants."""'),
]


@pytest.mark.parametrize(("system", "line"), SYSTEMS)
def test_modelfile_carries_template_system_prompt_and_stops(tokenizer, system, line):
    text = modelfile(chat_format(tokenizer), tokenizer, "model.gguf", system).splitlines()
    assert text[0] == "FROM ./model.gguf"
    assert line in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_ollama_export_writes_gguf_and_modelfile(tiny_run, tmp_path):
    out = export_run(tiny_run, "ollama", "q8_0", tmp_path / "ollama")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    assert (out / "model.gguf").read_bytes()[:4] == b"GGUF"
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in (out / "Modelfile").read_text()


def test_templates_of_another_shape_are_refused(tokenizer, tmp_path):
    tokenizer.chat_template = LLAMA2_TEMPLATE
    with pytest.raises(TunesmithError, match="prefix \\+ content \\+ suffix.*use --to gguf"):
        chat_format(tokenizer)
