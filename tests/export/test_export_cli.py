"""`tunesmith export` from the command line, and `tunesmith generate` on what it wrote."""

import shutil

import pytest

from tunesmith.cli import EXIT_USER_ERROR, main


def test_export_then_generate_from_the_gguf_answers_like_the_run(tiny_run, tmp_path, monkeypatch, capsys):
    # The .gguf is dequantised into a cache on first load: keep that cache in this test's folder.
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    out = tmp_path / "exported.gguf"
    assert main(["export", str(tiny_run), "--outtype", "f32", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ask = ["generate", "--prompt", "name[Zizzi], eatType[pub]", "--max-new-tokens", "8", "--model"]
    assert main([*ask, str(out)]) == 0
    from_gguf = capsys.readouterr().out
    assert main([*ask, str(tiny_run)]) == 0
    assert from_gguf == capsys.readouterr().out
    assert from_gguf.strip()


@pytest.fixture
def full_run(tiny_run, tmp_path):
    """A run folder without adapter/, as full fine-tuning leaves."""
    run = tmp_path / "full"
    shutil.copytree(tiny_run / "merged", run / "merged")
    return run


# arguments after RUN_DIR, the error line's expected text
BAD_REQUESTS = [
    (["--to", "onnx"], "--to 'onnx': choose one of gguf, ollama, gguf-lora"),
    (["--outtype", "q4_k"], "--outtype 'q4_k' for --to gguf: choose one of f32, f16, bf16, q8_0"),
    (["--to", "gguf-lora", "--outtype", "q8_0"], "--outtype 'q8_0' for --to gguf-lora: choose one of f32, f16, bf16"),
    (["--to", "gguf-lora"], "has no LoRA adapter (a full fine-tune?): export it with --to gguf"),
]


@pytest.mark.parametrize(("args", "message"), BAD_REQUESTS)
def test_bad_requests_exit_2_with_one_line(full_run, capsys, args, message):
    assert main(["export", str(full_run), *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in full_run.iterdir()) == ["merged"]


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == EXIT_USER_ERROR
    assert "is not a finished run folder: it has no merged/config.json" in capsys.readouterr().err
