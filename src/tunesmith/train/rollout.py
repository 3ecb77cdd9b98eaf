"""GRPO's prompts and rollouts: graded prompts tokenized, answers sampled in groups and graded.

A rollout draws from a ``torch.Generator`` seeded from (train.seed, the step's prompts), and the
step's prompts are a pure function of (seed, step): a resumed run samples the very same answers.
Answers are graded by ``graders.grade_many`` (python graders in a bounded process pool); a
sample the grader cannot score gets 0 and the run goes on.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field

import torch

from tunesmith.config import Config
from tunesmith.data.prepare import split_indices
from tunesmith.data.tokenize import encode_chat
from tunesmith.errors import TunesmithError
from tunesmith.generation import Sampling, generate_tokens, model_device, sampler
from tunesmith.graders import Context, Grader, grade_many, make_sample
from tunesmith.graders.data import read_graded


@dataclass(frozen=True)
class RLPrompt:
    line: int
    input_ids: list[int]  # the prompt in the model's chat template, ending with the assistant header
    item: dict  # the grader's item namespace


@dataclass
class GradedData:
    """What train.recipe needs of its data, for GRPO: prompts, not labelled examples."""

    train: list[RLPrompt]
    validation: list[RLPrompt]
    paths: tuple[str, ...]
    validation_examples: list = field(default_factory=list)  # no reference answers to show beside samples
    pairs: bool = False

    def summary(self) -> str:
        n_train, n_validation = len(self.train), len(self.validation)
        return f"{' + '.join(self.paths)}: reinforcement, {n_train} train and {n_validation} validation prompts"


def _read(path: str, grader: Grader, tokenizer) -> list[RLPrompt]:
    loaded = read_graded(path, grader)
    if loaded.errors:
        shown = "; ".join(str(e) for e in loaded.errors[:20])
        raise TunesmithError(f"data has {len(loaded.errors):,} error(s), fix them first: {shown}")
    return [RLPrompt(p.line, encode_chat(tokenizer, p.messages), p.item) for p in loaded.examples]


def prepare_graded(cfg: Config, grader: Grader, tokenizer) -> GradedData:
    """data.train (and data.validation, else a val_fraction split) as tokenized prompts."""
    train = _read(cfg.data.train, grader, tokenizer)
    if cfg.data.validation:
        return GradedData(train, _read(cfg.data.validation, grader, tokenizer), (cfg.data.train, cfg.data.validation))
    kept, held = split_indices(len(train), cfg.data.val_fraction, cfg.train.seed)
    validation = [train[i] for i in held] if held is not None else []
    return GradedData([train[i] for i in kept], validation, (cfg.data.train,))


@dataclass
class Rollout:
    answers: list[list[int]]  # group_size answers per prompt, each prompt's group consecutive
    rewards: torch.Tensor  # [answers] float64
    passed: torch.Tensor  # [answers] 1.0 where the grader's pass_threshold was met
    seconds: float


def rollout_seed(seed: int, prompts: list[RLPrompt]) -> int:
    """The generator's seed: a pure function of the run's seed and the step's prompts."""
    return zlib.crc32(json.dumps([seed, [p.line for p in prompts]]).encode())


def roll_out(
    model, tokenizer, prompts: list[RLPrompt], grader: Grader, context: Context, cfg: Config, group_size: int
) -> Rollout:
    """`group_size` answers per prompt (1 and greedy when `group_size` is 1: validation), graded."""
    rl = cfg.rl
    start = time.perf_counter()
    temperature = rl.temperature if group_size > 1 else 0.0
    sampling = Sampling(rl.max_new_tokens, temperature, rl.top_p, rollout_seed(cfg.train.seed, prompts))
    was_training = model.training
    model.eval()  # no dropout while sampling
    rows = [p.input_ids for p in prompts for _ in range(group_size)]
    answers = generate_tokens(
        model,
        rows,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        rl.max_new_tokens,
        rl.rollout_batch_size,
        sampler(sampling, model_device(model)),
    )
    model.train(was_training)
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    items = [p.item for p in prompts for _ in range(group_size)]
    grades = grade_many(grader, [make_sample(t) for t in texts], items, context)
    rewards = torch.tensor([g.reward for g in grades], dtype=torch.float64)
    passed = torch.tensor([float(bool(g.passed)) for g in grades], dtype=torch.float64)
    return Rollout(answers, rewards, passed, time.perf_counter() - start)
