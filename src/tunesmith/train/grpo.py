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

import torch

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
