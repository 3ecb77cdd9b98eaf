"""An Ollama model folder: the GGUF plus a Modelfile, ready for `ollama create NAME -f Modelfile`.

Ollama formats chats with a Go template, not the Jinja template the run trained with. Most chat
templates write each message as prefix + content + suffix per role (ChatML, Llama 3, Zephyr), so the
pieces are read off the Jinja template by rendering marked messages, and the Go template is built
from them. Before anything is written the pieces must reproduce the Jinja rendering exactly;
templates of another shape are refused rather than approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import write_model_gguf
from tunesmith.export.gguf_vocab import adds_token
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
    start: str = ""  # the BOS some templates write before the first message (Gemma, Llama 3)
    end: str = ""  # the EOS some templates write after a chat not left open for an answer (Phi-3)
    # Gemma has no system turn: the system message opens the first user turn (prefix["system"] is the
    # user prefix, suffix["system"] the separator) and that user message continues it without a prefix.
    system_opens_user: bool = False

    def render(self, messages, generation_prompt: bool) -> str:
        """The chat as the Go template built from these pieces writes it (plus start and end)."""
        if self.default_system is not None and (not messages or messages[0][0] != "system"):
            messages = [("system", self.default_system), *messages]
        text = "".join(
            ("" if self._continues_system(messages, i) else self.prefix[role]) + content + self.suffix[role]
            for i, (role, content) in enumerate(messages)
        )
        return self.start + text + (self.generation_prompt if generation_prompt else self.end)

    def _continues_system(self, messages, i: int) -> bool:
        return self.system_opens_user and messages[i][0] == "user" and i > 0 and messages[i - 1][0] == "system"

    def go_template(self, bos_added: bool = False) -> str:
        """Ollama's template. Its runtime adds BOS itself when the GGUF says the tokenizer does, so a
        template-written BOS is left out then; `end` is left out as Ollama renders chats to be answered."""

        def branch(role: str) -> str:
            prefix, after = self.prefix[role], ""
            if self.system_opens_user and role == "user":
                prefix = f"{{{{ if not $open }}}}{prefix}{{{{ end }}}}{{{{ $open = false }}}}"
            if self.system_opens_user and role == "system":
                after = "{{ $open = true }}"
            return f'eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{self.suffix[role]}{after}'

        branches = "{{ else if ".join(branch(role) for role in ROLES)
        return (
            ("" if bos_added else self.start)
            + ("{{ $open := false }}" if self.system_opens_user else "")
            + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{{{{ if {branches}{{{{ end }}}}"
            f'{{{{ if and $last (ne .Role "assistant") }}}}{self.generation_prompt}{{{{ end }}}}{{{{ end }}}}'
        )


def _cut(text: str, head: str = "", tail: str = "") -> str | None:
    if not (text.startswith(head) and text.endswith(tail)) or len(head) + len(tail) > len(text):
        return None
    return text[len(head) : len(text) - len(tail)]


def _start_and_end(tokenizer) -> tuple[str, str]:
    """A BOS every rendering begins with, an EOS a chat without a generation prompt ends with."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    renders = [_render(tokenizer, chat) for chat in (PROBE, PROBE[1:])]
    # Written once, in front (not ChatML's <|im_start|>, which SmolLM2 names its BOS and every turn opens with).
    start = bos if bos and all(text.startswith(bos) and text.count(bos) == 1 for text in renders) else ""
    head = PROBE[:2]
    plain, answered = _render(tokenizer, head), _render(tokenizer, head, True)
    # The EOS counts as an end only where the generation prompt takes its place (not appended after it).
    closed = eos and not answered.startswith(plain) and plain.endswith(eos)
    end = eos if closed and answered.startswith(plain[: -len(eos)]) else ""
    return start, end


def chat_format(tokenizer) -> ChatFormat:
    """Read the per-role pieces off the tokenizer's chat template, and check them."""
    refuse = TunesmithError(
        "Ollama export needs a chat template that writes each message as prefix + content + suffix "
        "(ChatML, Llama 3, Gemma, Phi-3, Zephyr, ...); this model's template has another shape: use --to gguf, "
        "whose tokenizer.chat_template runtimes apply themselves"
    )
    start, end = _start_and_end(tokenizer)

    def body(messages, generation_prompt: bool = False) -> str | None:
        return _cut(_render(tokenizer, messages, generation_prompt), start, "" if generation_prompt else end)

    text = body(PROBE)
    between, rest = [], text or ""
    for _, content in PROBE:
        if rest.count(content) != 1:
            raise refuse
        before, rest = rest.split(content)
        between.append(before)
    between.append(rest)  # p0 S p1 U1 p2 A1 p3 U2 p4 A2 p5
    head = PROBE[:2]
    plain, answered = body(head), body(head, True)
    generation = None if plain is None or answered is None else _cut(answered, plain)
    assistant_suffix = between[5]
    user_prefix = _cut(between[3], assistant_suffix)
    user_suffix = _cut(between[2], tail=generation or "")
    system_suffix = _cut(between[1], tail=user_prefix or "")
    system_opens_user = system_suffix is None and between[0] == user_prefix
    if system_opens_user:
        system_suffix = between[1]
    if None in (generation, user_prefix, user_suffix, system_suffix) or between[4] != between[2]:
        raise refuse
    pieces = ChatFormat(
        prefix={"system": between[0], "user": user_prefix, "assistant": generation},
        suffix={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
        generation_prompt=generation,
        default_system=None,
        start=start,
        end=end,
        system_opens_user=system_opens_user,
    )
    # A chat without a system message: does the template put one in?
    alone = [("user", "\u27e6U\u27e7")]
    without = _cut(pieces.render(alone, False), start, end) or ""
    inserted = _cut(body(alone) or "", pieces.prefix["system"], system_suffix + without)
    if inserted is not None and not system_opens_user:
        pieces = replace(pieces, default_system=inserted)
    for chat in (PROBE, PROBE[1:], PROBE[1:4]):
        for generation_prompt in (False, True):
            if pieces.render(chat, generation_prompt) != _render(tokenizer, chat, generation_prompt):
                raise refuse
    if any("{{" in piece or '"""' in piece for piece in (*pieces.prefix.values(), *pieces.suffix.values())):
        raise refuse
    return pieces


def modelfile(pieces: ChatFormat, tokenizer, gguf_name: str, system: str | None) -> str:
    stops = [pieces.suffix["assistant"].strip(), tokenizer.eos_token]
    bos_added = adds_token(tokenizer, tokenizer.bos_token_id, first=True)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{pieces.go_template(bos_added)}"""']
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
