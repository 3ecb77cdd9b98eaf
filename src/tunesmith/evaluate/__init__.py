"""Evaluation: base zero-shot and few-shot against the fine-tuned model, metrics and reports.

Calling the package runs tunesmith.library.evaluate: ``tunesmith.evaluate(config, **overrides)``."""

from tunesmith import callable_package

callable_package(__name__)
