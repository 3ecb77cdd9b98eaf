"""Encoder models (BERT family): masked-LM, contrastive and classification fine-tuning, pooling, export."""
