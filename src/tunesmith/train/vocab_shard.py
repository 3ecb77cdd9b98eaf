"""The tied embedding and output layer split by vocabulary rows across FSDP2's processes.

Under plain FSDP2 the tied [vocab, hidden] weight belongs to the root unit: it is gathered whole
for the first lookup and stays whole until the end of backward, and its gradient, computed whole
by the output layer at the start of backward, waits there for the embedding's share before being
reduce-scattered through a whole-size copy. For SmolLM2 that is four to five 108 MiB tensors on
every process at the end of backward, the moment of its peak memory.

Here each process keeps its rows of the weight, a DTensor `Shard(0)` that FSDP2 is told to
ignore, and the processes exchange rows of activations instead, which are a few MB: the lookup
gathers every process's token ids and sums the processes' partial embeddings; the label-only loss
gathers every process's label rows, computes its vocabulary slice's logits for all of them and
combines the log-sum-exp. The weight's gradient is then computed already sharded, as the mean
over processes that FSDP2 gives the other weights (each process's loss is scaled by the world
size, train/distributed.py), and nothing of vocabulary size is ever whole.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tunesmith.kernels.label_loss import kept_logits, vocabulary_grads, vocabulary_stats


def _gather_rows(rows: torch.Tensor, group, sizes: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Every process's `rows` (first dimensions may differ) in rank order, and how many each had;
    `sizes` where an earlier gather of as many rows already told them."""
    world = dist.get_world_size(group)
    if sizes is None:
        count = torch.tensor([len(rows)], device=rows.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        sizes = [int(c) for c in counts]
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]), sizes


def _own(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


class _ShardedLookup(torch.autograd.Function):
    """Embeddings of this process's `ids` from a weight whose rows [offset, offset + len(local))
    this process holds: every process looks up the ids it holds for all processes, the sum is each
    id's embedding."""

    @staticmethod
    def forward(ctx, local, ids, offset: int, padding_idx: int | None, group):
        flat, sizes = _gather_rows(ids.reshape(-1), group)
        mine = (flat >= offset) & (flat < offset + len(local))
        partial = local.new_zeros((len(flat), local.shape[1]))
        partial[mine] = local[flat[mine] - offset]
        dist.all_reduce(partial, group=group)
        if padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            mine &= flat != padding_idx
        ctx.save_for_backward(flat[mine] - offset, mine)
        ctx.local_shape, ctx.group, ctx.sizes = local.shape, group, sizes
        return partial[_own(sizes, dist.get_rank(group))].view(*ids.shape, local.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        rows, mine = ctx.saved_tensors
        grads, _ = _gather_rows(grad_out.reshape(-1, ctx.local_shape[1]), ctx.group, ctx.sizes)
        grad_local = grad_out.new_zeros(ctx.local_shape).index_add_(0, rows, grads[mine])
        return grad_local.div_(dist.get_world_size(ctx.group)), None, None, None, None


class _ShardedLabelLoss(torch.autograd.Function):
    """kernels/label_loss.OutputLayerLoss with the weight's rows spread over the processes."""

    @staticmethod
    def forward(
        ctx, hidden, local, targets, offset: int, chunk_size: int, dtype: torch.dtype, keep: bool, group, softcap
    ):
        rank = dist.get_rank(group)
        every, sizes = _gather_rows(hidden.to(dtype), group)
        every_target, _ = _gather_rows(targets, group, sizes)
        kept = kept_logits(keep, len(every), len(local), every)
        top, total, target_logit, best, best_index = vocabulary_stats(
            every, local, every_target, chunk_size, kept, offset=offset, softcap=softcap
        )
        # log-sum-exp over all slices: rescale each slice's sum to the largest logit of all.
        overall = top.clone()
        dist.all_reduce(overall, op=dist.ReduceOp.MAX, group=group)
        total.mul_((top - overall).exp_())
        best_value = best.clone()
        dist.all_reduce(best_value, op=dist.ReduceOp.MAX, group=group)
        # argmax over all slices: the lowest id among the slices holding the largest logit.
        best_index = torch.where(best == best_value, best_index, torch.iinfo(best_index.dtype).max)
        dist.all_reduce(total, group=group)
        dist.all_reduce(target_logit, group=group)
        dist.all_reduce(best_index, op=dist.ReduceOp.MIN, group=group)
        lse = overall + total.log()
        own = _own(sizes, rank)
        ctx.save_for_backward(every, local, every_target, lse)
        ctx.kept, ctx.sizes, ctx.group, ctx.offset, ctx.chunk_size = kept, sizes, group, offset, chunk_size
        ctx.softcap = softcap
        correct = (best_index[own] == targets).sum()
        ctx.mark_non_differentiable(correct)
        return (lse - target_logit)[own], correct

    @staticmethod
    def backward(ctx, grad_losses, _):
        every, local, every_target, lse = ctx.saved_tensors
        every_grad, _ = _gather_rows(grad_losses.contiguous(), ctx.group, ctx.sizes)
        wanted = (True, ctx.needs_input_grad[1])
        grad_every, grad_local, _ = vocabulary_grads(
            every, local, every_target, lse, every_grad, ctx.chunk_size, ctx.kept, wanted, ctx.softcap, ctx.offset
        )
        ctx.kept = None
        # Each process's rows get every slice's share of their gradient.
        dist.all_reduce(grad_every, group=ctx.group)
        grad_hidden = grad_every[_own(ctx.sizes, dist.get_rank(ctx.group))].to(every.dtype)
        if grad_local is not None:
            grad_local.div_(dist.get_world_size(ctx.group))
        return grad_hidden, grad_local, None, None, None, None, None, None, None


def _offset(weight) -> int:
    """The first vocabulary id of this process's rows (torch.chunk's split, as Shard(0) uses)."""
    rows = -(-weight.shape[0] // weight.device_mesh.size())
    return rows * weight.device_mesh.get_local_rank()


def is_vocab_sharded(weight: torch.Tensor) -> bool:
    return hasattr(weight, "device_mesh")


def sharded_label_losses(hidden, weight, targets, chunk_size: int, dtype: torch.dtype, keep: bool, softcap=None):
    """(cross-entropy of every label row, argmax hits) against a vocabulary-sharded output weight."""
    group = weight.device_mesh.get_group()
    local = weight.to_local()
    return _ShardedLabelLoss.apply(hidden, local, targets, _offset(weight), chunk_size, dtype, keep, group, softcap)


class VocabShardedEmbedding(nn.Module):
    """nn.Embedding whose rows are split over the processes of `mesh` (see the module's doc)."""

    def __init__(self, embedding: nn.Embedding, mesh):
        super().__init__()
        from torch.distributed.tensor import Shard, distribute_tensor

        whole = embedding.weight
        self.weight = nn.Parameter(distribute_tensor(whole.detach(), mesh, [Shard(0)]), whole.requires_grad)
        self.padding_idx = embedding.padding_idx
        self._whole: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._whole is not None:
            return F.embedding(ids, self._whole, self.padding_idx)
        group = self.weight.device_mesh.get_group()
        return _ShardedLookup.apply(self.weight.to_local(), ids, _offset(self.weight), self.padding_idx, group)

    @contextlib.contextmanager
    def whole(self, head: nn.Module):
        """The weight gathered whole for the model's own forward (generation), in `head` too."""
        sharded = head.weight
        with torch.no_grad():
            self._whole = self.weight.full_tensor()
        head.weight = nn.Parameter(self._whole, requires_grad=False)
        try:
            yield
        finally:
            head.weight, self._whole = sharded, None

    def extra_repr(self) -> str:
        rows, width = self.weight.shape
        return f"{rows}, {width}, rows split over {self.weight.device_mesh.size()} processes"


def splits_vocabulary(embedding: nn.Module) -> bool:
    """Whether `VocabShardedEmbedding` computes what this input embedding does: a plain lookup."""
    return type(embedding).forward is nn.Embedding.forward


def shard_vocabulary(model: nn.Module, head: nn.Module, mesh) -> set[nn.Parameter]:
    """Split a tied embedding / output weight by rows over `mesh`; the parameter FSDP2 must ignore.

    An untied model is left as it is (its output weight stays in FSDP2's root unit), and so is an
    embedding with a forward of its own (Gemma's scales its output), which the split would lose.
    """
    embedding = model.get_input_embeddings()
    if head.weight is not embedding.weight or not splits_vocabulary(embedding):
        return set()
    sharded = VocabShardedEmbedding(embedding, mesh)
    model.set_input_embeddings(sharded)
    head.weight = sharded.weight
    return {sharded.weight}
