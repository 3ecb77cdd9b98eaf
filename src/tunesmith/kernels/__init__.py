"""The fast paths: packed attention, the label-only output-layer loss, fused LoRA, lean storage,
the activation arena, added token rows trained beside their table.

Each has a test against the plain PEFT / transformers implementation it replaces; the recipe uses
them unless `train.fast_paths: false`, which runs that plain implementation instead.
"""
