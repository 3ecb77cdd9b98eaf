"""GRPO's prompts and rollouts: graded prompts tokenized, answers sampled in groups and graded.

A rollout draws from a ``torch.Generator`` seeded from (train.seed, the step's prompts), and the
step's prompts are a pure function of (seed, step): a resumed run samples the very same answers.
Answers are graded by ``graders.grade_many`` (python graders in a bounded process pool); a
sample the grader cannot score gets 0 and the run goes on.

A prompt is rendered as SFT renders it (graders.data.prompt_ids: a line's tools offered), its
answers held to its ``response_format`` by constrained decoding as the service holds them (the
policy is then trained on the answers the constraint let through), and read back with their tool
calls, so graders see ``sample.output_tools`` and ``sample.output_json``. The group's answers
share one prefill of their prompt (generation.generate_tokens' ``copies``).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from tunesmith.chat.tools import Tool
from tunesmith.config import Config
from tunesmith.data.prepare import split_indices
from tunesmith.errors import TunesmithError
from tunesmith.generation import Sampling, generate_tokens, model_device, sampler
from tunesmith.graders import Context, Grader, answer_sample, grade_many
from tunesmith.graders.data import answer_grammar, prompt_ids, read_graded


@dataclass(frozen=True)
class RLPrompt:
    line: int
    input_ids: list[int]  # the prompt in the model's chat template, ending with the assistant header
    item: dict  # the grader's item namespace
    tools: tuple[Tool, ...] = ()  # offered in the prompt: calls are read out of the answers
    response_format: dict | None = None  # the answers are held to it


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
    return [RLPrompt(p.line, prompt_ids(tokenizer, p), p.item, p.tools, p.response_format) for p in loaded.examples]


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
    answers = generate_tokens(
        model,
        [p.input_ids for p in prompts],
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        rl.max_new_tokens,
        rl.rollout_batch_size,
        sampler(sampling, model_device(model)),
        _grammars(tokenizer, model.config.vocab_size, prompts),
        copies=group_size,
    )
    model.train(was_training)
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    groups = [p for p in prompts for _ in range(group_size)]
    samples = [answer_sample(t, bool(p.tools)) for t, p in zip(texts, groups, strict=True)]
    grades = grade_many(grader, samples, [p.item for p in groups], context)
    rewards = torch.tensor([g.reward for g in grades], dtype=torch.float64)
    passed = torch.tensor([float(bool(g.passed)) for g in grades], dtype=torch.float64)
    return Rollout(answers, rewards, passed, time.perf_counter() - start)


def _grammars(tokenizer, vocab_size: int, prompts: list[RLPrompt]) -> list | None:
    """Each prompt's compiled response_format grammar (None: free), or None when no prompt has one."""
    if all(p.response_format is None for p in prompts):
        return None
    return [_compiled(tokenizer, vocab_size, json.dumps(p.response_format, sort_keys=True)) for p in prompts]


@lru_cache(maxsize=256)
def _compiled(tokenizer, vocab_size: int, response_format: str):
    """Compiled once per format: a run's prompts usually share a handful."""
    from tunesmith.constrained import compile_grammar

    grammar = answer_grammar(json.loads(response_format))
    return None if grammar is None else compile_grammar(tokenizer, vocab_size, grammar)
