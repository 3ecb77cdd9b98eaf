"""Organisation A's flood, in a process of its own so that its client threads do not slow the
measuring client: `python flood_client.py URL KEY MODEL`; floods until its stdin closes, prints
one line "ready" once each kind was answered, and at the end the statuses as a JSON list."""

import io
import json
import sys
import threading

import httpx
from test_serve_api import chat_rows, jsonl

from tunesmith.models import MINILM_L6

LONG_TEXTS = [" ".join(["contrastive fine-tuning of sentence encoders"] * 40)] * 32
BIG_UPLOAD = jsonl(chat_rows(20_000))  # ~2 MB, every line parsed by the upload check
THREADS_PER_KIND = 3  # one more than the largest per-organisation cap: some are refused

url, key, model = sys.argv[1:4]
stop = threading.Event()
statuses: list[int] = []
answered = [threading.Event() for _ in range(3)]
senders = [
    lambda http: http.post("/embeddings", json={"model": MINILM_L6, "input": LONG_TEXTS}),
    lambda http: http.get(f"/models/{model}/content"),
    lambda http: http.post(
        "/files", data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", io.BytesIO(BIG_UPLOAD))}
    ),
]


def flood(kind: int) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while not stop.is_set():
            statuses.append(senders[kind](http).status_code)
            answered[kind].set()


threads = [threading.Thread(target=flood, args=(kind,)) for kind in range(3) for _ in range(THREADS_PER_KIND)]
for thread in threads:
    thread.start()
print("ready" if all(event.wait(60) for event in answered) else "not ready", flush=True)
sys.stdin.read()
stop.set()
for thread in threads:
    thread.join()
print(json.dumps(statuses), flush=True)
