"""Generation for the API: one loaded copy of each base model, LoRA adapters swapped in.

Fine-tuned LoRA models of the same base share that base: the first adapter wraps it in a
``PeftModel``, later ones are added with ``load_adapter`` and chosen with ``set_adapter``; the
base itself answers inside ``disable_adapter()``. At most ``max_adapters`` adapters per base stay
in memory (least recently used is deleted first) and at most ``max_bases`` bases.

Generation is tunesmith.generation's loop (the one evaluation and `tunesmith generate` use), so
that every token can be streamed as it comes and counted exactly: ``prompt_tokens`` is the
length of the templated prompt, ``completion_tokens`` the number of tokens generated (the
end-of-turn token included when the model produced it, as it was generated and billed). One
lock per base serialises requests on that base: on a CPU running two generations at once is no
faster, and it keeps the active adapter stable. A request waits for the lock until its
``wait_until`` and is then refused (503, never a late empty answer). The lock is held only while
tokens are computed, never while a client reads: a caller's ``stop`` event, its ``timeout``
(counted from when it has the lock, not from when it queued) or :meth:`InferenceEngine.close`
ends a generation at the next token.

Loads are serialised too (one lock for all of them): two first requests for a model load it
once, and transformers' lazy imports never run in two threads at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from tunesmith.serve.executors import busy

if TYPE_CHECKING:
    from tunesmith.generation import Piece, Sampling

log = logging.getLogger("tunesmith.serve")


class _Base:
    def __init__(self, loaded):
        self.loaded = loaded
        self.peft = None  # PeftModel once the first adapter is loaded
        self.adapters: OrderedDict[str, str] = OrderedDict()  # adapter name -> path, LRU order
        self.lock = threading.Lock()


def _adapter_name(key: str) -> str:
    return "a_" + "".join(c if c.isalnum() else "_" for c in key)


class InferenceEngine:
    def __init__(self, max_adapters: int = 4, max_bases: int = 1):
        self.max_adapters = max(1, max_adapters)
        self.max_bases = max(1, max_bases)
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._closing = threading.Event()

    def close(self) -> None:
        """Stop every generation at its next token (the server is shutting down)."""
        self._closing.set()

    def _cached(self, name: str) -> _Base | None:
        with self._lock:
            base = self._bases.get(name)
            if base is not None:
                self._bases.move_to_end(name)
            return base

    def _base(self, name: str) -> _Base:
        if (base := self._cached(name)) is not None:
            return base
        with self._load_lock:
            if (base := self._cached(name)) is not None:  # loaded while this thread waited
                return base
            from tunesmith.models import load_model

            log.info("loading base model %s", name)
            loaded = load_model(name)
            loaded.model.eval()
            with self._lock:
                base = self._bases.setdefault(name, _Base(loaded))
                self._bases.move_to_end(name)
                while len(self._bases) > self.max_bases:
                    self._bases.popitem(last=False)
                return base

    def prepare(
        self, base_name: str, adapter_key: str | None, adapter_path: str | None, wait_until: float | None = None
    ) -> _Base:
        """Load the base (and make sure the adapter is loadable) before a response starts."""
        base = self._base(base_name)
        if adapter_key is not None:
            with _holding(base, wait_until):
                self._ensure_adapter(base, adapter_key, adapter_path)
        return base

    def _ensure_adapter(self, base: _Base, key: str, path: str) -> str:
        name = _adapter_name(key)
        if name in base.adapters:
            base.adapters.move_to_end(name)
            return name
        if base.peft is None:
            from peft import PeftModel

            base.peft = PeftModel.from_pretrained(base.loaded.model, path, adapter_name=name)
            base.peft.eval()
        else:
            base.peft.load_adapter(path, adapter_name=name)
        base.adapters[name] = path
        while len(base.adapters) > self.max_adapters:
            old, _ = base.adapters.popitem(last=False)
            base.peft.set_adapter(name)
            base.peft.delete_adapter(old)
        return name

    def forget(self, adapter_key: str) -> None:
        """Drop a deleted model's adapter; a base left without adapters is reloaded clean later."""
        name = _adapter_name(adapter_key)
        with self._lock:
            bases = list(self._bases.items())
        for base_name, base in bases:
            with base.lock:
                if name not in base.adapters:
                    continue
                if len(base.adapters) == 1:
                    with self._lock:
                        self._bases.pop(base_name, None)
                else:
                    del base.adapters[name]
                    other = next(iter(base.adapters))
                    base.peft.set_adapter(other)
                    base.peft.delete_adapter(name)

    def tokenizer(self, base_name: str):
        return self._base(base_name).loaded.tokenizer

    def context_length(self, base_name: str) -> int:
        return getattr(self._base(base_name).loaded.model.config, "max_position_embeddings", None) or 2048

    def chat_prompt(self, base_name: str, messages, tools=(), parallel_tool_calls=True, mode=None) -> list[int]:
        """The prompt's ids, rendered as chat.render does for training (``mode``: the run's rendering)."""
        from tunesmith.chat.render import render_prompt

        tokenizer = self.tokenizer(base_name)
        text = render_prompt(tokenizer, messages, tools, parallel_tool_calls, mode)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def compile(self, base_name: str, grammar):
        """``grammar`` (tunesmith.constrained) compiled for this base's tokenizer and output layer."""
        from tunesmith.constrained import compile_grammar

        loaded = self._base(base_name).loaded
        return compile_grammar(loaded.tokenizer, loaded.model.config.vocab_size, grammar)

    def text_prompt(self, base_name: str, prompt: str) -> list[int]:
        return self.tokenizer(base_name)(prompt, add_special_tokens=False)["input_ids"]

    def generate(
        self,
        base_name: str,
        adapter_key: str | None,
        adapter_path: str | None,
        prompt_ids: list[int],
        sampling: Sampling,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        wait_until: float | None = None,
        grammar=None,
    ) -> Iterator[Piece]:
        """Text pieces as tokens come (tunesmith.generation.stream) with this base's lock held.

        ``stop`` set (the client left), ``timeout`` seconds passed since the lock was taken or
        :meth:`close` end the generation before its next token, with finish_reason "length". The
        lock not free by ``wait_until`` (``time.monotonic()``) raises the 503 of an overloaded server.
        ``grammar``: a compiled grammar (:meth:`compile`) the text is held to.
        """
        from tunesmith.generation import stream

        base = self._base(base_name)
        with _holding(base, wait_until):
            deadline = None if timeout is None else time.monotonic() + timeout

            def should_stop() -> bool:
                late = deadline is not None and time.monotonic() > deadline
                return late or self._closing.is_set() or (stop is not None and stop.is_set())

            if adapter_key is not None:
                base.peft.set_adapter(self._ensure_adapter(base, adapter_key, adapter_path))
                model, context = base.peft, nullcontext()
            elif base.peft is not None:
                model, context = base.peft, base.peft.disable_adapter()
            else:
                model, context = base.loaded.model, nullcontext()
            with context:
                yield from stream(model, base.loaded.tokenizer, prompt_ids, sampling, should_stop, grammar)


@contextmanager
def _holding(base: _Base, wait_until: float | None):
    """``base.lock`` held, waited for until ``wait_until`` at most."""
    started = time.monotonic()
    wait = -1 if wait_until is None else max(0.0, wait_until - started)
    if not base.lock.acquire(timeout=wait):
        raise busy("inference", time.monotonic() - started, retry_after=5)
    try:
        yield
    finally:
        base.lock.release()
