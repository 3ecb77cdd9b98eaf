"""The fast paths: packed attention, fused LoRA, lean bf16 storage, the activation arena.

Each has a test against the plain PEFT / transformers implementation it replaces.
"""
