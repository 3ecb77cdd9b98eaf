"""/v1/chat/completions and /v1/completions, streamed or whole, on the inference executor.

One call of the executor per request loads the model, encodes the prompt, waits for the model's
lock and generates; its pieces come back through a queue. So an organisation's cap counts whole
requests, a free thread goes to the organisation served least recently, and a request that
cannot start within ``--inference-queue-timeout`` is answered 503 with ``Retry-After``: never a
200 whose text is empty because its time ran out while it waited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tunesmith.chat.tools import parse_tool_calls
from tunesmith.serve.errors import APIError
from tunesmith.serve.executors import FairExecutor
from tunesmith.serve.names import is_encoder
from tunesmith.serve.redact import public
from tunesmith.serve.routes.params import Org
from tunesmith.serve.schemas import ChatRequest, CompletionRequest, _Generation
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import Store, new_id
from tunesmith.serve.tool_calls import (
    CallSplitter,
    call_items,
    offered_tools,
    read_conversation,
    rendering_mode,
    request_grammar,
)

log = logging.getLogger("tunesmith.serve")

DISCONNECT_POLL_SECONDS = 0.25  # how soon a whole (non-streamed) generation notices its client left


def add_routes(app: FastAPI) -> None:
    from tunesmith.models import BUILTIN_MODELS

    store: Store = app.state.store
    settings: ServeSettings = app.state.settings
    engine = app.state.engine
    executor: FairExecutor = app.state.executors["inference"]

    def resolve(org: dict, name: str) -> tuple[str, str | None, str | None, str]:
        if name in BUILTIN_MODELS:
            return name, None, None, name
        if is_encoder(name):
            raise APIError(
                404,
                f"The model {name!r} is an embedding model, which does not generate text: use it with /v1/embeddings",
                param="model",
                code="model_not_found",
            )
        row = store.model(org["id"], name)
        if row is None:
            raise APIError(
                404,
                f"The model {name!r} does not exist or you do not have access to it",
                param="model",
                code="model_not_found",
            )
        return row["base"], row["job_id"], row["adapter_path"], name

    def load_and_encode(base: str, key: str | None, path: str | None, encode, param: str, wait_until: float):
        """On an inference thread: load the model (and adapter), then the prompt's token ids
        (``encode(base, adapter_path)``)."""
        try:
            engine.prepare(base, key, path, wait_until)
        except APIError:
            raise
        except Exception as error:
            log.exception("loading %s", base)
            raise APIError(500, f"could not load the model: {error}", code="model_load_failed") from None
        prompt_ids = encode(base, path)
        context = engine.context_length(base)
        if len(prompt_ids) >= context:
            raise APIError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {context} tokens",
                param=param,
                code="context_length_exceeded",
            )
        return prompt_ids

    def compiled(base: str, grammar):
        try:
            return engine.compile(base, grammar)
        except Exception as error:
            raise APIError(400, f"the output format cannot be enforced: {error}", param="response_format") from None

    async def complete(
        request: Request, org: dict, body: _Generation, encode, param: str, chat: bool, grammar=None, tools=False
    ):
        params = body.sampling(256 if chat else 16)
        base, key, path, name = resolve(org, body.model)
        loop = asyncio.get_running_loop()
        stop = threading.Event()  # set when the client is gone: the generation ends at its next token
        queue: asyncio.Queue = asyncio.Queue()  # pieces, then an error or None at the end
        wait_until = time.monotonic() + settings.inference_queue_timeout

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: the server is shutting down
                stop.set()

        def produce() -> None:
            # Runs to the end whatever the client reads: the model is never held by a slow reader.
            try:
                prompt_ids = load_and_encode(base, key, path, encode, param, wait_until)
                held_to = None if grammar is None else compiled(base, grammar)
                timeout = settings.generation_timeout
                pieces = engine.generate(base, key, path, prompt_ids, params, stop, timeout, wait_until, held_to)
                for piece in pieces:
                    put(piece)
            except Exception as error:
                if not isinstance(error, APIError):
                    log.exception("generation failed")
                    error = RuntimeError(public(str(error), settings.home))  # no server path in the answer
                put(error)
            finally:
                put(None)

        work = executor.submit(org["id"], produce)  # 429 over the organisation's cap
        finished = asyncio.wrap_future(work)
        gone, checked = False, time.monotonic()

        async def next_item():
            """The next piece; a client gone meanwhile stops the generation (or its turn in the queue).
            The executor's own refusal (a wait past the limit: produce never ran) comes as the error."""
            nonlocal gone, checked
            getter = asyncio.ensure_future(queue.get())
            while True:
                waiting = {getter} if finished.done() else {getter, finished}
                done, _ = await asyncio.wait(
                    waiting, timeout=DISCONNECT_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if finished.done() and not finished.cancelled() and finished.exception() is not None:
                    getter.cancel()
                    return finished.exception()
                # Looked at every DISCONNECT_POLL_SECONDS, also while pieces keep coming.
                if not gone and time.monotonic() - checked >= DISCONNECT_POLL_SECONDS:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        gone = True
                        stop.set()
                        if work.cancel():  # it had not started: nothing will come
                            getter.cancel()
                            return None
                if getter in done:
                    return getter.result()

        first = await next_item()
        if isinstance(first, Exception):
            raise first
        if gone or first is None:
            return Response(status_code=499)  # nobody reads it
        reply = Reply(name, chat, body.include_usage, tools)
        if not body.stream:
            pieces = [first]
            while (piece := await next_item()) is not None:
                if isinstance(piece, Exception):
                    raise piece
                pieces.append(piece)
            if gone:
                return Response(status_code=499)
            await finished  # the organisation's slot is free before the client has its answer
            return JSONResponse(reply.whole(pieces))
        return StreamingResponse(
            reply.stream(first, queue, stop),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, org: Org, request: Request):
        conversation = read_conversation(body)
        tools = offered_tools(body, conversation)
        grammar = request_grammar(body, tools)

        def encode(base: str, adapter_path: str | None) -> list[int]:
            mode = rendering_mode(base, adapter_path)
            try:
                return engine.chat_prompt(base, conversation.messages, tools, conversation.parallel_tool_calls, mode)
            except Exception as error:
                raise APIError(
                    400, f"messages cannot be rendered with the model's chat template: {error}", param="messages"
                ) from None

        return await complete(request, org, body, encode, "messages", True, grammar, bool(tools))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, org: Org, request: Request):
        def encode(base: str, adapter_path: str | None) -> list[int]:
            prompt_ids = engine.text_prompt(base, body.text)
            if not prompt_ids:
                raise APIError(400, "prompt must not be empty", param="prompt")
            return prompt_ids

        return await complete(request, org, body, encode, "prompt", chat=False)


class Reply:
    """One completion's response: the whole object, or its server-sent event stream."""

    def __init__(self, model: str, chat: bool, include_usage: bool, tools: bool = False):
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.tools = tools  # tools were offered: calls in the text come back as tool_calls
        self.id = new_id("chatcmpl-" if chat else "cmpl-")
        self.created = int(time.time())

    @staticmethod
    def usage(last) -> dict:
        return {
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens,
        }

    def whole(self, pieces: list) -> dict:
        text, last = "".join(p.text for p in pieces), pieces[-1]
        content, calls = parse_tool_calls(text) if self.tools else (text, [])
        finish = "tool_calls" if calls else last.finish_reason
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        if not self.chat:
            choice["text"] = text
        elif calls:
            message = {"role": "assistant", "content": content or None, "refusal": None}
            choice["message"] = {**message, "tool_calls": call_items(calls)}
        else:
            choice["message"] = {"role": "assistant", "content": content, "refusal": None}
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(last),
            "system_fingerprint": None,
        }

    def _event(self, choices: list, **extra) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(obj)}\n\n".encode()

    def _chunk(self, delta_or_text, finish=None) -> bytes:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update({"delta": delta_or_text} if self.chat else {"text": delta_or_text})
        return self._event([choice], system_fingerprint=None)

    async def stream(self, first, queue: asyncio.Queue, stop: threading.Event):
        try:
            if self.chat:
                yield self._chunk({"role": "assistant", "content": ""})
            last, piece, splitter = None, first, CallSplitter(self.tools)
            while piece is not None:
                if isinstance(piece, Exception):
                    raise piece
                last = piece
                if text := splitter.feed(piece.text):
                    yield self._chunk({"content": text} if self.chat else text)
                piece = await queue.get()
            content, calls = splitter.finish()
            if content:
                yield self._chunk({"content": content})
            for index, item in enumerate(call_items(calls)):
                opening = {"index": index, "id": item["id"], "type": "function"}
                name = {"name": item["function"]["name"], "arguments": ""}
                yield self._chunk({"tool_calls": [{**opening, "function": name}]})
                arguments = {"arguments": item["function"]["arguments"]}
                yield self._chunk({"tool_calls": [{"index": index, "function": arguments}]})
            yield self._chunk({} if self.chat else "", "tool_calls" if calls else last.finish_reason)
            if self.include_usage:
                yield self._event([], usage=self.usage(last))
        except Exception as error:
            message = {"message": f"generation failed: {error}", "type": "server_error", "param": None}
            yield f"data: {json.dumps({'error': {**message, 'code': 'server_error'}})}\n\n".encode()
        finally:
            stop.set()  # the client left (the stream was cancelled) or all was sent
        yield b"data: [DONE]\n\n"
