"""Helpers: a real `tunesmith serve` process on 127.0.0.1, a free port and a temporary home."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tunesmith.serve.store import Store

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, args: list[str], env: dict[str, str]):
        self.home, self.args, self.env = home, args, env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Server:
        self.log = open(self.home / f"server-{time.time():.0f}.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith.serve.cli",
                "serve",
                "--port",
                str(self.port),
                "--home",
                str(self.home),
                *self.args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                httpx.get(self.url + "/models", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def key(self, org: str) -> str:
        return Store(self.home).create_key(org)

    def client(self, key: str):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
