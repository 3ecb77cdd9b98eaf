"""Model names as the service uses them: a built-in base, or a fine-tune named after its root base.

A fine-tune's name carries its root base (``ft:{base}:{org}:{suffix}:{job}``, as OpenAI's do), so
whether a model embeds text or generates it is known from its name alone: an encoder's fine-tunes,
and their fine-tunes, are encoders too.
"""

from __future__ import annotations


def root_base(model: str) -> str:
    """The built-in model that ``model`` was fine-tuned from (itself for a built-in name)."""
    return model.split(":")[1] if model.startswith("ft:") else model


def is_encoder(model: str) -> bool:
    """Whether ``model`` (a built-in name or a fine-tune's name) is an embedding model."""
    from tunesmith.models import ENCODER_MODELS

    return root_base(model) in ENCODER_MODELS
