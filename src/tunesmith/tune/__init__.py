"""Choosing well: weight interpolation between base and fine-tune (WiSE-FT) and its trade-off curve."""
