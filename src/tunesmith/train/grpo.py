"""Group Relative Policy Optimization (Shao et al., 2024): learn from a grader's scores of sampled answers.

Per step, each prompt gets `rl.group_size` sampled answers (train/rollout.py), a grader scores them,
and an answer's advantage is how much better it scored than its group: no value model, the group is
the baseline. The loss per answer token is PPO's clipped surrogate plus a KL penalty to the
reference model (the k3 estimator, unbiased and always >= 0):

    ratio = exp(logp - logp_old)
    loss_t = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * (exp(ref - logp) - (ref - logp) - 1)

With one update per rollout logp_old is logp detached, so the ratio is 1 and the clip never binds;
the form is kept so the gradient is GRPO's (and a clip fraction of 0 says so in the metrics).

Normalisation (rl.loss_normalisation): `token` sums loss_t over the step's answer tokens and divides by
their number (DAPO, Dr. GRPO); `sequence` averages each answer's tokens, then the answers (GRPO).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from tunesmith.config import Config
from tunesmith.data.batching import pack_groups, pad_batch
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunesmith.errors import TunesmithError
from tunesmith.precision import autocast
from tunesmith.runfolder import VAL
from tunesmith.train.loss import label_token_losses
from tunesmith.train.objective import to_device, unlabelled

ADVANTAGE_EPS = 1e-4  # a group whose answers all scored the same has std 0: advantages 0, not 0/0


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """[n_prompts * group_size] rewards (each prompt's group consecutive) -> advantages, the same shape:
    r - mean of its group, divided by the group's (unbiased) std + eps when `scale`."""
    groups = rewards.view(-1, group_size).double()
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    return centred.view(-1).to(rewards.dtype)


def token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    reference_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    epsilon: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per answer token (all [tokens], `advantages` already spread to its answer's tokens): the loss,
    the KL to the reference (0 without one), and whether the clip bound (1.0 / 0.0)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages
    loss = -torch.minimum(unclipped, clipped)
    if reference_logps is None:
        kl = torch.zeros_like(logps)
    else:
        delta = reference_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return loss, kl.detach(), (clipped < unclipped).float().detach()


def reduce_loss(
    losses: torch.Tensor, owner: torch.Tensor, answer_lengths: torch.Tensor, step_tokens: int, step_answers: int, how
):
    """The micro-batch's share of the step's loss: `token` = sum / the step's answer tokens;
    `sequence` = sum over answers of (their token mean) / the step's answers. `owner` [tokens] is each
    token's answer in the micro-batch, `answer_lengths` [answers] their token counts."""
    if how == "token":
        return losses.sum() / max(step_tokens, 1)
    per_answer = torch.zeros(len(answer_lengths), dtype=losses.dtype, device=losses.device).index_add(0, owner, losses)
    return (per_answer / answer_lengths.clamp(min=1).to(losses.dtype)).sum() / max(step_answers, 1)


class PromptBatch(list):
    """A micro-batch of GRPO: its prompts (their answers come with the step's rollout)."""

    @property
    def n_tokens(self) -> int:
        return sum(len(p.input_ids) for p in self)


class GRPOObjective:
    """GRPO through the recipe's objective interface (train/objective.py).

    A step's items are prompts. `start_step` rolls out and grades the whole step's prompts (the same
    on every process: a pure function of the step), and computes the group advantages;
    `forward` scores this process's prompts' answers with the policy (and the reference) and returns
    the clipped loss. In evaluation mode `forward` answers each prompt `rl.eval_samples` times (once:
    greedily; more: sampled) and its loss is minus the mean reward: the recipe's best checkpoint is
    the one with the highest validation reward.
    """

    # Sums over answers and answer tokens (a training window, a validation pass), in this order.
    sums = ("loss", "reward", "reward_sq", "passed", "kl", "clipped", "answer_tokens", "answers", "rollout_seconds")

    def __init__(self, cfg: Config, pad_id: int, device, tokenizer):
        from tunesmith.graders import Context
        from tunesmith.graders.load import load_grader

        self.cfg, self.pad_id, self.device, self.tokenizer = cfg, pad_id, device, tokenizer
        self.rl = cfg.rl
        self.grader = load_grader(cfg.rl.grader)
        self.context = Context()
        self.step_counts = [0]  # prompts
        self.model = None
        self.reference_model = None
        self.rollout = None  # this step's: Rollout, advantages, and each prompt's first answer index
        self.step_tokens = self.step_answers = 0
        self.first_forward = True
        # Training seconds of a metrics window: its wall time less rollouts and validations.
        self.window_open: float | None = None
        self.validation_seconds = 0.0

    def check(self, data) -> None:
        if not data.train:
            raise TunesmithError(f"{self.cfg.data.train}: no prompts to train on")

    def setup(self, model, data) -> None:
        """Keeps the model to sample with; full fine-tuning with a KL term: a frozen copy as the reference."""
        self.model = model
        if not self.cfg.method.lora and self.rl.beta > 0:
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)

    def sizes(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Prompt tokens (answers are not known before the step); no labels."""
        lengths = np.array([len(p.input_ids) for p in items], dtype=np.int64)
        return lengths, np.zeros_like(lengths)

    def sequence_lengths(self, items) -> list[int]:
        return [len(p.input_ids) + self.rl.max_new_tokens for p in items]

    def counts(self, items) -> list[int]:
        return [len(items)]

    def batch(self, items) -> PromptBatch:
        return PromptBatch(items)  # the answers do not exist yet: forward builds the token batch

    def start_step(self, items) -> None:
        from tunesmith.train.rollout import roll_out

        self.step_counts = self.counts(items)
        if self.window_open is None:
            self.window_open, self.validation_seconds = time.perf_counter(), 0.0
        with autocast(self.cfg.train.dtype, self.device):
            rollout = roll_out(
                self.model, self.tokenizer, items, self.grader, self.context, self.cfg, self.rl.group_size
            )
        advantages = group_advantages(rollout.rewards, self.rl.group_size, self.rl.scale_rewards)
        first = {id(p): i * self.rl.group_size for i, p in enumerate(items)}
        self.rollout = (rollout, advantages, first)
        self.step_tokens = sum(len(a) for a in rollout.answers)
        self.step_answers = len(rollout.answers)
        self.first_forward = True

    def _answers_batch(self, prompts, answers: list[list[int]]):
        """The answers after their prompts. Packed (data.packing), a group's answers share one pass
        over their prompt, as a DPO pair's two answers do: with group_size 4 and answers half a prompt
        long, under half the tokens, and no padding to the step's longest answer."""
        group = len(answers) // max(len(prompts), 1)
        groups = [
            [
                TokenizedExample(
                    p.input_ids + a, [IGNORE_INDEX] * len(p.input_ids) + a, p.line, len(p.input_ids) + len(a)
                )
                for a in answers[i * group : (i + 1) * group]
            ]
            for i, p in enumerate(prompts)
        ]
        if self.cfg.data.packing:
            return to_device(pack_groups(groups, self.pad_id), self.device)
        return to_device(pad_batch([e for g in groups for e in g], self.pad_id), self.device)

    def _token_logps(self, model, batch) -> torch.Tensor:
        train = self.cfg.train
        losses, _ = label_token_losses(model, batch, train.loss_chunk_size, train.fast_paths)
        return -losses.float()

    def _reference_logps(self, model, batch) -> torch.Tensor | None:
        if self.rl.beta == 0:
            return None
        with torch.no_grad():
            if self.reference_model is not None:
                return self._token_logps(self.reference_model, batch)
            with model.disable_adapter():
                return self._token_logps(model, batch)

    def forward(self, model, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        if not model.training:
            return self._validate(model, prompts)
        rollout, advantages, first = self.rollout
        indices = [first[id(p)] + j for p in prompts for j in range(self.rl.group_size)]
        answers = [rollout.answers[i] for i in indices]
        if not prompts or not any(answers):  # nothing to learn from here; FSDP2 still needs the forward
            empty = unlabelled(self.pad_id)
            losses, _ = label_token_losses(model, to_device(pad_batch([empty], self.pad_id), self.device), 1, False)
            return losses.sum() * 0.0, self._sums(rollout, indices, torch.zeros(0), torch.zeros(0), torch.zeros(0))
        batch = self._answers_batch(prompts, answers)
        lengths = torch.tensor([len(a) for a in answers], device=self.device)
        owner = torch.arange(len(answers), device=self.device).repeat_interleave(lengths)
        reference = self._reference_logps(model, batch)
        logps = self._token_logps(model, batch)
        token_advantages = advantages[indices].to(self.device, torch.float32)[owner]
        losses, kl, clipped = token_losses(
            logps, logps.detach(), reference, token_advantages, self.rl.epsilon, self.rl.beta
        )
        loss = reduce_loss(losses, owner, lengths, self.step_tokens, self.step_answers, self.rl.loss_normalisation)
        return loss, self._sums(rollout, indices, losses.detach(), kl, clipped)

    def _sums(self, rollout, indices, losses, kl, clipped) -> torch.Tensor:
        rewards, passed = rollout.rewards[indices], rollout.passed[indices]
        seconds = rollout.seconds if self.first_forward else 0.0
        self.first_forward = False
        values = [
            losses.sum().item(),
            rewards.sum().item(),
            (rewards**2).sum().item(),
            passed.sum().item(),
            kl.sum().item(),
            clipped.sum().item(),
            sum(len(rollout.answers[i]) for i in indices),
            len(indices),
            seconds,
        ]
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def _validate(self, model, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        from tunesmith.train.rollout import roll_out

        if not prompts:
            return torch.zeros((), device=self.device), torch.zeros(len(self.sums), device=self.device)
        start = time.perf_counter()
        rollout = roll_out(model, self.tokenizer, prompts, self.grader, self.context, self.cfg, self.rl.eval_samples)
        self.validation_seconds += time.perf_counter() - start
        self.first_forward = False
        indices = list(range(len(rollout.answers)))
        zeros = torch.zeros(0)
        sums = self._sums(rollout, indices, -rollout.rewards, zeros, zeros)
        return -rollout.rewards.sum().to(self.device), sums

    def metrics(self, sums: list[float], counts: list[int], prefix: str) -> dict:
        """Per answer: reward mean and std, pass rate, length; per answer token: loss, KL, clip fraction.
        Validation's loss is minus its mean reward."""
        named = dict(zip(self.sums, sums, strict=True))
        answers, tokens = max(named["answers"], 1), max(named["answer_tokens"], 1)
        mean = named["reward"] / answers
        out = {
            f"{prefix}_loss": named["loss"] / (answers if prefix == VAL else tokens),
            f"{prefix}_reward": mean,
            f"{prefix}_reward_std": math.sqrt(max(named["reward_sq"] / answers - mean**2, 0.0)),
            f"{prefix}_answer_length": named["answer_tokens"] / answers,
        }
        if self.grader.pass_threshold is not None:
            out[f"{prefix}_pass_rate"] = named["passed"] / answers
        if prefix != VAL:
            wall = time.perf_counter() - self.window_open if self.window_open is not None else 0.0
            self.window_open = None
            out |= {
                f"{prefix}_kl": named["kl"] / tokens,
                f"{prefix}_clip_fraction": named["clipped"] / tokens,
                f"{prefix}_rollout_seconds": named["rollout_seconds"],
                # forward, backward, optimizer (and checkpoint writes between log steps)
                f"{prefix}_training_seconds": max(wall - named["rollout_seconds"] - self.validation_seconds, 0.0),
            }
        return out
