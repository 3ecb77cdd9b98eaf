"""python graders: grade(sample, item) in a sandboxed process; whatever it does wrong scores 0 and
is reported, never raised."""

import pytest

from tunesmith.graders import Context, grade, grade_many, make_sample, parse_grader
from tunesmith.graders.sandbox import Limits

FAST = Context(limits=Limits(cpu_seconds=1, memory_bytes=512 << 20, wall_seconds=3), workers=2)


def python(body: str, imports: str = "") -> dict:
    source = f"{imports}\ndef grade(sample, item):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    return {"type": "python", "name": "code", "source": source}


# The CPU limit on its own: a wall-clock limit far above it, so a loaded machine still hits the CPU one.
CPU_ONLY = Context(limits=Limits(cpu_seconds=1, memory_bytes=512 << 20, wall_seconds=60))


def run(body: str, imports: str = "", item=None, context=FAST):
    return grade(parse_grader(python(body, imports)), make_sample("The Eagle is cheap."), item or {}, context)


@pytest.mark.parametrize(
    "body, imports, reward",
    [
        ("return len(sample['output_text']) / 100", "", 0.19),
        ("return item['slots'].count('cheap') + (sample['output_json'] is None)", "", 2.0),
        ("return statistics.mean([1, 2]) + len(re.findall('a', sample['output_text']))", "import re, statistics", 3.5),
        ("open('notes.txt', 'w').write('x' * 5)\nreturn len(open('notes.txt').read())", "", 5.0),  # its own folder
        ("with tempfile.NamedTemporaryFile('w') as f:\n    return float(f.write('abc'))", "import tempfile", 3.0),
        ("return True", "", None),
    ],
)
def test_scores(body, imports, reward):
    result = run(body, imports, {"slots": ["cheap", "near"]})
    if reward is None:
        assert result.errors["python_grader_runtime_error"] and "must return a number" in result.messages[0]
    else:
        assert result.reward == pytest.approx(reward)
        assert not any(result.errors.values())


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("server") / "keys.txt"
    path.write_text("sk-secret")
    return path


REFUSED = [
    # (what, body, imports, error in the report)
    ("socket", "socket.socket(socket.AF_INET, socket.SOCK_STREAM)", "import socket", "socket.__new__"),
    ("connect", "socket.create_connection(('127.0.0.1', 9))", "import socket", "may not do this: socket."),
    (
        "http",
        "urllib.request.urlopen('http://127.0.0.1:9')",
        "import urllib.request",
        "may not do this: urllib.Request",
    ),
    ("write elsewhere", "open('/tmp/tunesmith-escape.txt', 'w')", "", "may not write '/tmp/tunesmith-escape.txt'"),
    ("write via ..", "open('../escape.txt', 'w')", "", "may not write '../escape.txt'"),
    ("delete elsewhere", "os.remove('{secret}')", "import os", "may not os.remove"),
    ("read another folder", "return len(open('{secret}').read())", "", "may not read"),
    ("list another folder", "return len(os.listdir('{folder}'))", "import os", "may not os.listdir"),
    (
        "read the server's code",
        "return len(open(json.__file__.replace('json/__init__.py', '../site-packages/x')).read())",
        "import json",
        "may not read",
    ),
    ("symlink out", "os.symlink('{secret}', 'link')", "import os", "may not do this: os.symlink"),
    (
        "patched path functions",
        "os.path.realpath = os.path.abspath = lambda p: os.getcwd()\nreturn len(open('{secret}').read())",
        "import os",
        "may not read",
    ),
    ("subprocess", "subprocess.run(['true'])", "import subprocess", "may not import _posixsubprocess"),
    ("os.system", "os.system('true')", "import os", "may not do this: os.system"),
    ("fork", "os.fork()", "import os", "may not do this: os.fork"),
    ("ctypes", "return 1", "import ctypes", "may not import ctypes"),
    ("sqlite", "sqlite3.connect('{secret}')", "import sqlite3", "may not import sqlite3"),
    (
        "raise own limits",
        "resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "import resource",
        "may not do this: resource.setrlimit",
    ),
    ("hand-made bytecode", "grade.__code__.replace(co_code=b'')", "", "may not do this: code.__new__"),
    ("memory", "x = bytearray(1 << 31)\nreturn 1", "", "MemoryError"),
    ("cpu time", "while True:\n    pass", "", "CPU-time limit"),
    ("wall clock", "time.sleep(60)", "import time", "3 s wall-clock limit"),
    ("crash", "raise ValueError('bad item')", "", "ValueError: bad item"),
    ("exit", "raise SystemExit(3)", "", "SystemExit: 3"),
    ("nan", "return float('nan')", "", "grade() returned nan"),
    ("forged answer", "os.write(3, b'{{\"score\": 1e999}}\\n')\nos._exit(0)", "import os", "and no score"),
]


@pytest.mark.parametrize("what, body, imports, error", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(what, body, imports, error, secret):
    context = CPU_ONLY if what == "cpu time" else FAST
    result = run(body.format(secret=secret, folder=secret.parent), imports, context=context)
    assert result.reward == 0.0
    flag = "unresponsive_reward_error" if what in ("cpu time", "wall clock") else "python_grader_runtime_error"
    assert result.errors[flag], result.messages
    assert error in result.messages[0]
    assert secret.read_text() == "sk-secret"


def test_no_server_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server")
    assert run("return len(os.environ.get('OPENAI_API_KEY', ''))", "import os").reward == 0.0


def test_many_in_order_and_isolated():
    grader = parse_grader(python("return float(sample['output_text'])"))
    texts = ["1", "2", "x", "4"]
    results = grade_many(grader, [make_sample(t) for t in texts], [{}] * 4, FAST)
    assert [r.reward for r in results] == [1.0, 2.0, 0.0, 4.0]
    assert [r.errors["python_grader_runtime_error"] for r in results] == [False, False, True, False]


@pytest.mark.parametrize(
    "source, message",
    [
        ("def grade(sample, item)\n    return 1", "source: the source does not parse: line 1"),
        ("def score(sample, item):\n    return 1", "source: the source must define a top-level function grade"),
    ],
)
def test_refused_sources(source, message):
    from tunesmith.graders import GraderError

    with pytest.raises(GraderError) as error:
        parse_grader({"type": "python", "name": "code", "source": source})
    assert str(error.value).startswith(message)
