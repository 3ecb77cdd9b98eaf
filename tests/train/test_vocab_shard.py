"""The vocabulary-split embedding and label loss on two gloo processes against one process's plain
computation: the same losses, argmax hits and gradients, with ranks holding different numbers of
rows (one holding none) and a vocabulary that does not split evenly."""

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

VOCAB, WIDTH, PAD = 51, 8, 3
ROWS = (11, 0)  # label rows on rank 0 and rank 1
TOKENS = ((2, 5), (1, 4))  # [batch, seq] of token ids on each rank


def _data():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(VOCAB, WIDTH, generator=g)
    weight[30] = weight[1]  # id 1 (rank 0's rows) ties with id 30 (rank 1's): argmax takes 1
    hidden = torch.randn(sum(ROWS), WIDTH, generator=g)
    hidden[0] = weight[1] * 10
    targets = torch.randint(0, VOCAB, (sum(ROWS),), generator=g)
    targets[0] = 1
    ids = [torch.randint(0, VOCAB, shape, generator=g) for shape in TOKENS]
    ids[1][0, 0] = PAD
    scale = torch.linspace(0.5, 1.5, sum(ROWS))
    return weight, hidden, targets, ids, scale


def _rank(rank: int, store_path: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from tunesmith.train.vocab_shard import VocabShardedEmbedding, sharded_label_losses

    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    weight, hidden, targets, ids, scale = _data()
    start = ROWS[0] * rank
    own = slice(start, start + ROWS[rank])
    rows = slice(26 * rank, 26 * rank + (26 if rank == 0 else 25))

    # The reference: one process, the plain computation of all ranks' rows.
    ref_weight, ref_hidden = weight.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    logits = ref_hidden @ ref_weight.t()
    ref_losses = F.cross_entropy(logits, targets, reduction="none")
    (ref_losses * scale).sum().backward()
    ref_correct = int((logits.argmax(-1)[own] == targets[own]).sum())

    embedding = VocabShardedEmbedding(torch.nn.Embedding(VOCAB, WIDTH, padding_idx=PAD, _weight=weight.clone()), mesh)
    local_hidden = hidden[own].clone().requires_grad_(True)
    losses, correct = sharded_label_losses(local_hidden, embedding.weight, targets[own], 4, torch.float32, True)
    # Each process's loss is scaled by the world size, the other weights' gradients averaged (FSDP2).
    ((losses * scale[own]).sum() * 2).backward()
    torch.testing.assert_close(losses, ref_losses[own].detach(), rtol=1e-5, atol=1e-6)
    assert int(correct) == ref_correct
    torch.testing.assert_close(local_hidden.grad / 2, ref_hidden.grad[own], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding.weight.grad.to_local(), ref_weight.grad[rows], rtol=1e-5, atol=1e-6)

    plain = torch.nn.Embedding(VOCAB, WIDTH, padding_idx=PAD, _weight=weight.clone())
    grads = [torch.randn(*shape, WIDTH, generator=torch.Generator().manual_seed(i)) for i, shape in enumerate(TOKENS)]
    for i in range(2):
        (plain(ids[i]) * grads[i]).sum().backward()
    embedding.weight.grad = None
    looked_up = embedding(ids[rank])
    torch.testing.assert_close(looked_up, plain(ids[rank]).detach())
    ((looked_up * grads[rank]).sum() * 2).backward()
    local_grad = embedding.weight.grad.to_local()
    torch.testing.assert_close(local_grad, plain.weight.grad[rows], rtol=1e-5, atol=1e-6)
    if rank == 0:
        assert local_grad[PAD].abs().sum() == 0  # the padding row gets no gradient, as nn.Embedding's

    head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    head.weight = embedding.weight
    with embedding.whole(head):
        torch.testing.assert_close(head(hidden[:2]), hidden[:2] @ weight.t())
        torch.testing.assert_close(embedding(ids[0]), plain(ids[0]).detach())
    assert head.weight is embedding.weight
    torch.distributed.destroy_process_group()


def test_vocabulary_split_loss_and_lookup_equal_one_process(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "store"),), nprocs=2, join=True)
