"""The fast paths: packed attention, the label-only output-layer loss, fused LoRA, lean storage,
the activation arena, added token rows trained beside their table.

Each has a test against the plain PEFT / transformers implementation it replaces; the recipe uses
them unless `train.fast_paths: false`, which runs that plain implementation instead.
"""

import functools


@functools.cache
def with_mixin(prefix: str, mixin: type, cls: type) -> type:
    """`cls` with `mixin`'s methods first, named `<prefix><cls>`: a subclass, not a patched instance, so
    print(model) names it and isinstance checks still hold."""
    return type(f"{prefix}{cls.__name__}", (mixin, cls), {"__module__": mixin.__module__})
