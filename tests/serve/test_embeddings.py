"""`POST /v1/embeddings` through the official openai SDK, against the built-in encoder."""

import numpy as np
import openai
import pytest

from tunesmith.encoders.model import load_encoder
from tunesmith.models import MINILM_L6

TEXTS = ["Contrastive fine-tuning of sentence encoders.", "A protein folds into its native structure."]


def test_embeddings_match_the_encoder_and_count_tokens(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    encoder = load_encoder(MINILM_L6)
    expected = encoder.encode(TEXTS)

    # The SDK asks for base64 and decodes it; the float format is what other clients use.
    reply = client.embeddings.create(model=MINILM_L6, input=TEXTS)
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    assert [d.index for d in reply.data] == [0, 1] and reply.model == MINILM_L6
    assert got.shape == (2, 384) and np.abs(got - expected).max() <= 1e-5
    tokens = int(encoder.tokenize(TEXTS)["attention_mask"].sum())
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens

    single = client.embeddings.create(model=MINILM_L6, input=TEXTS[1], encoding_format="float")
    assert np.abs(np.array(single.data[0].embedding) - expected[1]).max() <= 1e-5
    assert MINILM_L6 in [m.id for m in client.models.list()]


BAD_REQUESTS = [
    ({"model": "no-such-encoder", "input": "x"}, openai.NotFoundError, "model"),
    ({"model": "smollm2-135m-instruct", "input": "x"}, openai.NotFoundError, "model"),
    ({"model": MINILM_L6, "input": []}, openai.BadRequestError, "input"),
    ({"model": MINILM_L6, "input": ["ok", ""]}, openai.BadRequestError, "input"),
    ({"model": MINILM_L6, "input": "x", "encoding_format": "int8"}, openai.BadRequestError, "encoding_format"),
]


def test_bad_embedding_requests(fake_server):
    server = fake_server()
    client = server.client(server.key("acme"))
    for kwargs, error, param in BAD_REQUESTS:
        with pytest.raises(error) as caught:
            client.embeddings.create(**kwargs)
        assert caught.value.body["param"] == param, kwargs
