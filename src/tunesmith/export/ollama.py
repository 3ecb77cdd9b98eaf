"""An Ollama model folder: the GGUF plus a Modelfile, ready for `ollama create NAME -f Modelfile`.

Ollama formats chats with a Go template, not the Jinja template the run trained with. Most chat
templates write each message as prefix + content + suffix per role (ChatML, Llama 3, Zephyr), so the
pieces are read off the Jinja template by rendering marked messages, and the Go template is built
from them. Before anything is written the pieces must reproduce the Jinja rendering exactly;
templates of another shape are refused rather than approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import write_model_gguf
from tunesmith.paths import write_dir_atomic

ROLES = ("system", "user", "assistant")
# Marked contents; the probe conversation is system, user, assistant, user, assistant.
PROBE = [
    ("system", "\u27e6S\u27e7"),
    ("user", "\u27e6U1\u27e7"),
    ("assistant", "\u27e6A1\u27e7"),
    ("user", "\u27e6U2\u27e7"),
    ("assistant", "\u27e6A2\u27e7"),
]


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


@dataclass(frozen=True)
class ChatFormat:
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str  # what opens the assistant's answer
    default_system: str | None  # what the template inserts when a chat has no system message

    def render(self, messages, generation_prompt: bool) -> str:
        """The chat as the Go template built from these pieces writes it."""
        if self.default_system is not None and (not messages or messages[0][0] != "system"):
            messages = [("system", self.default_system), *messages]
        text = "".join(self.prefix[role] + content + self.suffix[role] for role, content in messages)
        return text + (self.generation_prompt if generation_prompt else "")

    def go_template(self) -> str:
        branches = "{{ else if ".join(
            f'eq .Role "{role}" }}}}{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}' for role in ROLES
        )
        return (
            "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{{{{ if {branches}{{{{ end }}}}"
            f'{{{{ if and $last (ne .Role "assistant") }}}}{self.generation_prompt}{{{{ end }}}}{{{{ end }}}}'
        )


def _cut(text: str, head: str = "", tail: str = "") -> str | None:
    if not (text.startswith(head) and text.endswith(tail)) or len(head) + len(tail) > len(text):
        return None
    return text[len(head) : len(text) - len(tail)]


def chat_format(tokenizer) -> ChatFormat:
    """Read the per-role pieces off the tokenizer's chat template, and check them."""
    refuse = TunesmithError(
        "Ollama export needs a chat template that writes each message as prefix + content + suffix "
        "(ChatML, Llama 3, Zephyr, ...); this model's template has another shape: use --to gguf, whose "
        "tokenizer.chat_template runtimes apply themselves"
    )
    text = _render(tokenizer, PROBE)
    between, rest = [], text
    for _, content in PROBE:
        if rest.count(content) != 1:
            raise refuse
        before, rest = rest.split(content)
        between.append(before)
    between.append(rest)  # p0 S p1 U1 p2 A1 p3 U2 p4 A2 p5
    head = PROBE[:2]
    generation = _cut(_render(tokenizer, head, True), _render(tokenizer, head))
    assistant_suffix = between[5]
    user_prefix = _cut(between[3], assistant_suffix)
    user_suffix = _cut(between[2], tail=generation or "")
    system_suffix = _cut(between[1], tail=user_prefix or "")
    if None in (generation, user_prefix, user_suffix, system_suffix) or between[4] != between[2]:
        raise refuse
    pieces = ChatFormat(
        prefix={"system": between[0], "user": user_prefix, "assistant": generation},
        suffix={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
        generation_prompt=generation,
        default_system=None,
    )
    # A chat without a system message: does the template put one in?
    alone = [("user", "\u27e6U\u27e7")]
    inserted = _cut(_render(tokenizer, alone), pieces.prefix["system"], system_suffix + pieces.render(alone, False))
    if inserted is not None:
        pieces = ChatFormat(pieces.prefix, pieces.suffix, generation, inserted)
    for chat in (PROBE, PROBE[1:], PROBE[1:4]):
        for generation_prompt in (False, True):
            if pieces.render(chat, generation_prompt) != _render(tokenizer, chat, generation_prompt):
                raise refuse
    if any("{{" in piece or '"""' in piece for piece in (*pieces.prefix.values(), *pieces.suffix.values())):
        raise refuse
    return pieces


def modelfile(pieces: ChatFormat, tokenizer, gguf_name: str, system: str | None) -> str:
    stops = [pieces.suffix["assistant"].strip(), tokenizer.eos_token]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{pieces.go_template()}"""']
    system = system if system is not None else pieces.default_system
    if system is not None:
        if '"""' in system:
            raise TunesmithError('the system prompt contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in dict.fromkeys(s for s in stops if s)]
    return "\n".join(lines) + "\n"


def write_ollama(merged: Path, out_dir: Path, outtype: str, name: str, system: str | None) -> Path:
    """`out_dir/model.gguf` and `out_dir/Modelfile`; `system` (the run's data.system) becomes the default
    system prompt, as training put it into every example without one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    pieces = chat_format(tokenizer)  # refuse before the long GGUF write
    text = modelfile(pieces, tokenizer, "model.gguf", system)

    def fill(folder: Path) -> None:
        write_model_gguf(merged, folder / "model.gguf", outtype, name)
        (folder / "Modelfile").write_text(text, encoding="utf-8")

    return write_dir_atomic(out_dir, fill)
