import pytest

from tunesmith.models import DEFAULT_MODEL, TINY_TEST_MODEL, load_model, load_tokenizer


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer (the tiny test model shares it)."""
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_name():
    load_model(TINY_TEST_MODEL)  # build the cached folder once per session
    return TINY_TEST_MODEL
