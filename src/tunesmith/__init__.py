"""tunesmith: fine-tune pre-trained language models on your own task data."""

__version__ = "0.1.0"
