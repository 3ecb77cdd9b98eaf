import pytest

from tunesmith.models import load_model


@pytest.fixture(scope="session")
def tiny(tiny_model_name):
    """The cached 2-layer test model (random weights, SmolLM2's tokenizer), loaded once."""
    loaded = load_model(tiny_model_name)
    loaded.model.eval()
    return loaded


@pytest.fixture
def prefer_tokens(tiny):
    """Add a large logit bonus to chosen token ids for the duration of a test."""
    handles = []

    def apply(token_ids, bonus=30.0):
        def hook(module, inputs, output):
            output = output.clone()
            output[..., list(token_ids)] += bonus
            return output

        handles.append(tiny.model.get_output_embeddings().register_forward_hook(hook))

    yield apply
    for handle in handles:
        handle.remove()
