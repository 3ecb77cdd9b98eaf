"""The token store gives the same token ids and labels as the in-memory pipeline it replaced (a
pickle cache of Python lists): digests taken from that pipeline on the shipped E2E data before it
was removed. The batch-order digests matched that pipeline too until epoch_order moved from
Python's random.shuffle to numpy (1.5 s per epoch at a million examples): they were re-taken then
and now guard the new order. All were re-taken again when the GGUF tokenizer got SmolLM2's pretrained
splitting (digits split off before GPT-2's split: 12 of the 4,488 training examples, a double space
before a digit, became one token shorter)."""

import hashlib
import math

import pytest
import torch

from tests.conftest import REPO
from tunesmith.config import config_from_dict
from tunesmith.data import batching
from tunesmith.data.prepare import prepare_data
from tunesmith.train.distributed import ONE_PROCESS
from tunesmith.train.objective import SFTObjective
from tunesmith.train.recipe import StepBatches

E2E = REPO / "data/e2e_nlg"

# (validation file, group_by_length) -> digests of (train ids and labels, validation ids and
# labels, the micro-batches, label and token counts of 40 steps around the first epoch's end).
EXPECTED = {
    (None, False): ("20d6052931b83db7", "18d8d7fda03fec79", "6936529d3a0b8f40"),
    (None, True): ("20d6052931b83db7", "18d8d7fda03fec79", "d52d3923e9fb626a"),
    ("validation.jsonl", False): ("0b62bc9277e3bee5", "02d7060f2fbfa7b6", "982b8276871eaf6c"),
}


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _config(tmp_path, validation, group_by_length):
    data = {"train": str(E2E / "train.jsonl"), "max_seq_len": 256, "group_by_length": group_by_length}
    data |= {"validation": str(E2E / validation)} if validation else {"val_fraction": 0.1}
    return config_from_dict(
        {
            "model": "unused",
            "data": data,
            "train": {"batch_size": 4, "grad_accum": 2, "seed": 7},
            "out_dir": str(tmp_path / "run"),
        }
    )


@pytest.mark.parametrize("validation,group_by_length", [(None, False), (None, True), ("validation.jsonl", False)])
def test_store_matches_the_in_memory_pipeline(tmp_path, monkeypatch, smol_tokenizer, validation, group_by_length):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    # The rows in the layout the digests were taken with: every example whole, no shared prompt.
    monkeypatch.setattr(batching, "shareable_prefix", lambda examples, start=0: start)
    cfg = _config(tmp_path, validation, group_by_length)
    data = prepare_data(cfg.data, smol_tokenizer, cfg.train.seed, cfg.train.batch_size, cfg.train.grad_accum)
    train = [(e.input_ids, e.labels, e.line) for e in (data.train[i] for i in range(len(data.train)))]
    val = [(e.input_ids, e.labels, e.line) for e in (data.validation[i] for i in range(len(data.validation)))]
    steps_per_epoch = math.ceil(len(data.train) / (cfg.train.batch_size * cfg.train.grad_accum))
    objective = SFTObjective(cfg, smol_tokenizer.pad_token_id, torch.device("cpu"))
    step_batches = StepBatches(data.train, cfg, objective, steps_per_epoch, ONE_PROCESS)
    steps = []
    for number in list(range(20)) + list(range(steps_per_epoch - 2, steps_per_epoch + 18)):
        step = step_batches(number)
        inputs = [b.input_ids.tolist() for b in step.batches]
        steps.append((inputs, [b.targets.tolist() for b in step.batches], step.label_tokens, step.tokens))
    got = (_digest(train), _digest(val), _digest(steps))
    assert got == EXPECTED[(validation, group_by_length)]
