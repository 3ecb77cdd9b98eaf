"""Choosing well: the hyperparameter search on the validation split within a forgetting budget
(`tunesmith tune`: search.py and its parts), and weight interpolation between base and fine-tune
(WiSE-FT) with its trade-off curve (interpolate.py)."""
