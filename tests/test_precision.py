import pytest
import torch

from tunesmith import precision


@pytest.mark.parametrize(
    ("setting", "hardware_bf16", "warned"),
    [("bfloat16", False, True), ("bfloat16", True, False), ("auto", False, False), ("float32", False, False)],
)
def test_bfloat16_asked_for_where_it_is_emulated_is_warned_about(monkeypatch, setting, hardware_bf16, warned):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: hardware_bf16)
    said = precision.slow_dtype_warning(setting, torch.device("cpu"))
    assert (said is not None) == warned
    if warned:
        assert "train.dtype: auto picks float32 here" in said
    # auto never chooses the emulated dtype.
    assert precision.compute_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if hardware_bf16 else torch.float32)
