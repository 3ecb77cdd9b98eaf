"""Fixtures: real `tunesmith serve` processes on a free port and a temporary home."""

import signal
import sys

import pytest
from serve_helpers import FAKE_TRAINER, Server


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(args=(), env=None, home=None) -> Server:
        server = Server(home or tmp_path / "home", list(args), env or {})
        server.home.mkdir(parents=True, exist_ok=True)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill(signal.SIGTERM)


@pytest.fixture
def fake_server(make_server):
    """A server whose trainer is the fake one (fast, same files as the real trainer)."""

    def make(env=None, args=(), home=None):
        return make_server(
            ["--trainer-command", f"{sys.executable} {FAKE_TRAINER}", *args],
            {"FAKE_STEP_SECONDS": "0.02", **(env or {})},
            home,
        )

    return make


@pytest.fixture
def inference_server(make_server, tiny_model_name):
    """A server for inference on the tiny model (info log: model loads are logged)."""

    def make(*args):
        return make_server(
            ["--trainer-command", f"{sys.executable} {FAKE_TRAINER}", "--log-level", "info", *args],
            {"FAKE_STEP_SECONDS": "0.5"},
        )

    return make
