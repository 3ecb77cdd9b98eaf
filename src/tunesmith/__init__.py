"""tunesmith: fine-tune pre-trained language models on your own task data.

The library's front is three functions (tunesmith.library): ``tunesmith.train(config,
**overrides)``, ``tunesmith.evaluate(config, run_dir)`` and ``tunesmith.load(run_dir)``.
``train`` and ``evaluate`` are also subpackages; each is made callable (``callable_package``)
so that the name means the function whether or not the subpackage was imported yet.
"""

import sys
import types

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "load"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tunesmith import library

        return getattr(library, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def callable_package(name: str) -> None:
    """Called by a subpackage on itself: calling it calls tunesmith.library's function of that name."""
    sys.modules[name].__class__ = _CallablePackage


def __getattr__(name: str):
    # Imported on first use: `import tunesmith` stays cheap (no torch, no transformers).
    if name in ("train", "evaluate"):
        import importlib

        return importlib.import_module(f"tunesmith.{name}")
    if name == "load":
        from tunesmith.library import load

        return load
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
