from pathlib import Path

import pytest

from tunesmith.models import DEFAULT_MODEL, TINY_TEST_MODEL, load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer (the tiny test model shares it)."""
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_name():
    load_model(TINY_TEST_MODEL)  # build the cached folder once per session
    return TINY_TEST_MODEL


@pytest.fixture(scope="session")
def small_e2e(tmp_path_factory):
    """64 training and 16 validation lines of the shipped E2E data."""
    folder = tmp_path_factory.mktemp("e2e")
    lines = (REPO / "data/e2e_nlg/train.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:64]) + "\n")
    (folder / "validation.jsonl").write_text("\n".join(lines[64:80]) + "\n")
    return folder
