"""Direct Preference Optimization (Rafailov et al., 2023): learn from pairs which answer is better.

For a prompt x with a preferred answer y+ and another y-, the implicit reward of an answer is
beta * (log pi(y|x) - log pi_ref(y|x)) and the loss is -log sigmoid(reward(y+) - reward(y-)),
averaged over the pairs of the accumulated step; `method.sft_weight` adds the NLL of the
preferred answer per token (RPO, and OpenAI's DPO), which keeps its likelihood from falling.

Costs, kept low:
* one model in memory. With LoRA the reference is the same model with the adapter disabled (one
  no-grad forward per micro-batch); with full fine-tuning the reference log-probs are computed
  once before training, one no-grad pass over the data, and stored with the tokenized pairs;
* the pairs of a micro-batch go through the model packed in one row, no padding, and the prompt
  of each pair once (data/batching.py pack_groups): its tokens (all but the last, which predicts
  each answer's first token) are a segment that both answers continue, so a pair costs its prompt
  once and two answers, not two whole sequences;
* log-probs only at answer positions, through the label-only output layer of train/loss.py: no
  [batch, seq, vocab] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config import Config
from tunesmith.data.batching import Batch, pack_groups, pad_batch
from tunesmith.data.preference import TokenizedPair
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.errors import TunesmithError
from tunesmith.precision import autocast
from tunesmith.progress import tracked
from tunesmith.runfolder import LOSS, metric_name
from tunesmith.train.loss import label_token_losses
from tunesmith.train.objective import label_count, to_device, unlabelled


@dataclass(frozen=True)
class ScoredPair(TokenizedPair):
    """A tokenized pair with its reference log-probs (full fine-tuning: computed before training)."""

    reference: tuple[float, float] = (0.0, 0.0)


@dataclass
class PairBatch:
    sequences: Batch  # chosen and rejected of every pair, alternating: c0, r0, c1, r1, ...
    n_pairs: int
    chosen_label_tokens: int
    reference: torch.Tensor | None  # [n_pairs, 2] stored reference log-probs, or None (LoRA)

    @property
    def n_tokens(self) -> int:
        return self.sequences.n_tokens

    @property
    def n_label_tokens(self) -> int:
        return self.sequences.n_label_tokens


def pair_batch(pairs: list[TokenizedPair], pad_id: int, packing: bool) -> PairBatch:
    groups = [[p.chosen, p.rejected] for p in pairs]
    sequences = pack_groups(groups, pad_id) if packing else pad_batch([side for g in groups for side in g], pad_id)
    chosen_labels = sum(label_count(p.chosen) for p in pairs)
    stored = all(isinstance(p, ScoredPair) for p in pairs)
    reference = torch.tensor([p.reference for p in pairs]) if stored else None
    return PairBatch(sequences, len(pairs), chosen_labels, reference)


def sequence_logps(model, batch: Batch, n_sequences: int, chunk_size: int, fast: bool = True) -> torch.Tensor:
    """Summed log-prob of each sequence's label tokens [n_sequences], from label positions only."""
    losses, _ = label_token_losses(model, batch, chunk_size, fast)
    if batch.lengths is None:  # padded: one sequence per row
        owner = torch.arange(batch.targets.shape[0], device=losses.device)[:, None].expand_as(batch.targets)
    else:  # packed: the row's segments in order (a padding tail last, with no labels), shared prompts skipped
        prompts = set(batch.parents or ())
        sequence = torch.tensor([i not in prompts for i in range(len(batch.lengths))]).cumsum(0) - 1
        owner = sequence.repeat_interleave(torch.tensor(batch.lengths)).to(losses.device)[None]
    owner = owner[batch.targets != IGNORE_INDEX]
    sums = torch.zeros(max(n_sequences, len(batch.lengths or ())), device=losses.device, dtype=losses.dtype)
    return -sums.index_add(0, owner, losses)[:n_sequences]


def reference_logps(model, batch: Batch, n_sequences: int, chunk_size: int, fast: bool = True) -> torch.Tensor:
    """The same log-probs from the model with its LoRA adapter switched off: the base model."""
    with torch.no_grad(), model.disable_adapter():
        return sequence_logps(model, batch, n_sequences, chunk_size, fast)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the (detached) implicit rewards [pairs, 2], from [pairs, 2] log-probs
    (column 0 the preferred answer)."""
    rewards = beta * (policy - reference)
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]), rewards.detach()


class DPOObjective:
    # The numbers summed over pairs (a training window, a validation pass), in this order.
    sums = (LOSS, "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "chosen_nll")

    def __init__(self, cfg: Config, pad_id: int, device):
        self.cfg, self.pad_id, self.device = cfg, pad_id, device
        self.beta, self.sft_weight = cfg.method.beta, cfg.method.sft_weight
        self.step_counts = [0, 0]  # pairs, preferred-answer label tokens

    def check(self, data) -> None:
        if not data.pairs:
            raise TunesmithError(
                f"method.name=dpo needs preference pairs; {self.cfg.data.train} is not "
                "(expected OpenAI DPO JSONL or prompt/chosen/rejected)"
            )

    def setup(self, model, data) -> None:
        """Full fine-tuning: the reference log-probs of every pair, before the first step changes
        the weights (and before a resumed run loads its checkpoint)."""
        if self.cfg.method.lora:
            return
        for items in (data.train, data.validation):
            items[:] = self._with_reference(model, items)

    @torch.no_grad()
    def _with_reference(self, model, pairs: list[TokenizedPair]) -> list[ScoredPair]:
        was_training = model.training
        model.eval()
        scored = []
        size = self.cfg.train.batch_size
        for start in tracked(range(0, len(pairs), size), f"reference log-probs of {len(pairs)} pairs"):
            chunk = pairs[start : start + size]
            batch = pair_batch(chunk, self.pad_id, self.cfg.data.packing)
            with autocast(self.cfg.train.dtype, self.device):
                logps = self._logps(model, batch).view(-1, 2).tolist()
            scored += [
                ScoredPair(p.chosen, p.rejected, p.line, p.dropped_turns, tuple(lp))
                for p, lp in zip(chunk, logps, strict=True)
            ]
        model.train(was_training)
        return scored

    def _logps(self, model, batch: PairBatch) -> torch.Tensor:
        train = self.cfg.train
        sequences = to_device(batch.sequences, self.device)
        return sequence_logps(model, sequences, 2 * batch.n_pairs, train.loss_chunk_size, train.fast_paths)

    def sizes(self, items: list[TokenizedPair]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and label tokens of each pair (both sides)."""
        lengths = [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in items]
        labels = [label_count(p.chosen) + label_count(p.rejected) for p in items]
        return np.array(lengths, dtype=np.int64), np.array(labels, dtype=np.int64)

    def sequence_lengths(self, items: list[TokenizedPair]) -> list[int]:
        return [len(side.input_ids) for p in items for side in (p.chosen, p.rejected)]

    def counts(self, items: list[TokenizedPair]) -> list[int]:
        # Every pair weighs the same in a step, and every preferred-answer token in the NLL term.
        return [len(items), sum(label_count(p.chosen) for p in items)]

    def batch(self, items: list[TokenizedPair]) -> PairBatch:
        if not items:  # a process without pairs still runs a forward (train/objective.py: unlabelled)
            return PairBatch(pad_batch([unlabelled(self.pad_id)], self.pad_id), 0, 0, torch.zeros(0, 2))
        return pair_batch(items, self.pad_id, self.cfg.data.packing)

    def start_step(self, items: list[TokenizedPair]) -> None:
        self.step_counts = self.counts(items)

    def _reference(self, model, batch: PairBatch) -> torch.Tensor:
        if batch.reference is not None:
            return batch.reference.to(self.device)
        sequences = to_device(batch.sequences, self.device)
        train = self.cfg.train
        logps = reference_logps(model, sequences, 2 * batch.n_pairs, train.loss_chunk_size, train.fast_paths)
        return logps.view(-1, 2)

    def forward(self, model, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        reference = self._reference(model, batch)
        policy = self._logps(model, batch).view(-1, 2)
        losses, rewards = dpo_loss(policy, reference, self.beta)
        step_pairs, step_chosen_labels = self.step_counts
        loss = losses.sum() / max(step_pairs, 1)
        if self.sft_weight:
            loss = loss - self.sft_weight * policy[:, 0].sum() / max(step_chosen_labels, 1)
        detached, margins = policy.detach(), rewards[:, 0] - rewards[:, 1]
        sums = torch.stack(
            [
                losses.detach().sum(),
                (margins > 0).sum().float(),
                margins.sum(),
                detached[:, 0].sum(),
                detached[:, 1].sum(),
                -detached[:, 0].sum(),
            ]
        ).float()
        return loss, sums

    def metrics(self, sums: list[float], counts: list[int], prefix: str) -> dict:
        """Per pair: DPO loss, reward accuracy and margin, mean log-probs; the NLL term per token."""
        pairs, chosen_labels = max(counts[0], 1), max(counts[1], 1)
        out = {metric_name(prefix, name): value / pairs for name, value in zip(self.sums[:-1], sums, strict=False)}
        if self.sft_weight:
            out[metric_name(prefix, "chosen_nll")] = sums[-1] / chosen_labels
        return out
