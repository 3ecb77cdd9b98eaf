"""Training: the recipe (setup / loop / save) and its parts.

Calling the package runs tunesmith.library.train: ``tunesmith.train(config, **overrides)``."""

from tunesmith import callable_package

callable_package(__name__)
