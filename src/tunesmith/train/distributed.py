"""More than one process: PyTorch's elastic launcher starts them, DDP or FSDP2 shares the work.

One training loop serves every world size. `Dist` is what the loop sees of the others: on one
process (no process group at all) its reductions return their input and its barriers do nothing.
On several, each process trains on its token-balanced share of every step's examples, and the
model is wrapped:

- DDP (LoRA's default): every process holds the whole model; gradients are averaged after the
  last micro-batch of a step. LoRA gradients are a few MB, so this costs little.
- FSDP2 (`fully_shard` per decoder layer, full fine-tuning's default): parameters, gradients and
  AdamW state are sharded across processes, each layer gathered just for its forward and backward.

Both average gradients over processes, so each process scales its loss by the world size: with the
loss divided by the label tokens of the whole step, the sum over processes is the one-process loss.
gloo runs on CPU, NCCL on CUDA; no socket code of ours, no home-made process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.kernels.label_loss import output_layer
from tunesmith.precision import default_device
from tunesmith.train.vocab_shard import VocabShardedEmbedding, shard_vocabulary

EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (rank 0 of 1 without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over processes (in place). A sync point."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[world_size, *shape]: every process's `tensor`. A sync point."""
        if self.world_size == 1:
            return tensor[None]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


ONE_PROCESS = Dist()


def start(timeout_s: int) -> Dist:
    """Join the process group the launcher set up (WORLD_SIZE etc. in the environment), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=default_device())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # The timeout turns a dead peer into an error in every survivor instead of a hang.
    torch.distributed.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
    )
    return Dist(rank, world_size, local_rank, device)


def check_same_config(dist: Dist, text: str) -> None:
    """Refuse to train when the processes (on several machines, from several files) disagree."""
    if dist.world_size == 1:
        return
    configs: list[str | None] = [None] * dist.world_size
    torch.distributed.all_gather_object(configs, text)
    differing = [rank for rank, other in enumerate(configs) if other != configs[0]]
    if differing:
        raise TunesmithError(
            f"the processes were given different configs: ranks {differing} differ from rank 0; "
            "give every node the same config file and overrides"
        )


def split_by_tokens(lengths: list[int], parts: int) -> list[list[int]]:
    """Positions of `lengths` in `parts` groups of nearly equal token sums, each in its original order.

    Longest first to the lightest group (ties: the lower group): a pure function of the lengths, so
    every process computes the same split without talking to the others.
    """
    groups: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for position in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(position)
        loads[lightest] += lengths[position]
    return [sorted(group) for group in groups]


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` in `parts` consecutive runs whose sizes differ by at most one (larger first)."""
    size, extra = divmod(len(items), parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


class LossModule(nn.Module):
    """The model with the objective's loss as its forward: what DDP and FSDP2 wrap.

    Both hook the forward of the module they wrap, and tunesmith's losses run the decoder and the
    output layer themselves (they never call the model's own forward), so the loss must be that
    forward. Returns the objective's (loss, metric sums) (train/objective.py). `objective` is None
    where only the state dict's names are wanted (checkpoints of a bare model).
    """

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objective.forward(self.model, batch)


def resolve_strategy(strategy: str, method: str) -> str:
    if strategy == "auto":
        return "fsdp" if method == "full" else "ddp"
    if strategy == "fsdp" and method != "full":
        raise TunesmithError(
            "distributed.strategy fsdp shards full fine-tuning; a LoRA adapter is small enough to "
            "replicate: use ddp (or auto)"
        )
    return strategy


def wrap(module: LossModule, strategy: str, dist: Dist, shard_vocab: bool) -> nn.Module:
    """`module` as this world size trains it: itself on one process, else under DDP or FSDP2.

    FSDP2 with `shard_vocab` (the label-only loss, which knows how) splits a tied embedding by
    vocabulary rows instead of keeping it in the root unit (train/vocab_shard.py).
    """
    if dist.world_size == 1:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # No buffer broadcast before every forward: the model's buffers (rotary frequencies) are constants.
        device_ids = [dist.device] if dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    decoder, head = output_layer(module.model)
    # One unit per decoder layer: a layer's weights exist whole only while it runs. The final norm
    # (and embeddings and output layer where they are not split by vocabulary) are the root's unit.
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    split = shard_vocabulary(module.model, head, mesh) if shard_vocab else set()
    return fully_shard(module, mesh=mesh, ignored_params=split)


def unwrapped(wrapped: nn.Module) -> LossModule:
    return wrapped.module if hasattr(wrapped, "no_sync") else wrapped


def no_gradient_sync(wrapped: nn.Module, last_micro_batch: bool):
    """DDP: average gradients only after a step's last micro-batch (before it, accumulate locally).

    FSDP2 reduce-scatters after every micro-batch: skipping that would keep unsharded gradients,
    the memory FSDP2 is there to save.
    """
    if last_micro_batch or not hasattr(wrapped, "no_sync"):
        return contextlib.nullcontext()
    return wrapped.no_sync()


@contextlib.contextmanager
def whole_weights(wrapped: nn.Module):
    """For code that calls the model's own forward (generation): FSDP2's root weights gathered.

    The decoder layers gather their own weights when they run; every process must run the same
    forwards (greedy generation on the same prompts does).
    """
    if hasattr(wrapped, "unshard") and hasattr(wrapped, "reshard"):
        model = unwrapped(wrapped).model
        embedding = model.get_input_embeddings()
        split = isinstance(embedding, VocabShardedEmbedding)
        wrapped.unshard()
        try:
            with embedding.whole(output_layer(model)[1]) if split else contextlib.nullcontext():
                yield
        finally:
            wrapped.reshard()
    else:
        yield


def whole_model(wrapped: nn.Module, fresh_model: Callable[[], nn.Module], dist: Dist) -> nn.Module | None:
    """The trained model, whole, for export on rank 0 (None on the other processes).

    Under FSDP2 the shards are gathered to rank 0's CPU and put into a fresh copy of the base model
    (`fresh_model()`), so what is exported is an ordinary model; otherwise every process has it whole.
    """
    model = unwrapped(wrapped).model
    if not hasattr(wrapped, "unshard"):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return None
    plain = fresh_model()
    plain.load_state_dict({name.removeprefix("model."): tensor for name, tensor in full.items()})
    return plain


def local_state_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Bytes of trained weights, gradients (when they exist: between steps they are freed) and
    optimizer state held by this process: what FSDP2 shards."""

    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor

    tensors = [local(p) for p in params] + [local(p.grad) for p in params if p.grad is not None]
    tensors += [local(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _port_taken(port: int) -> bool:
    """Whether another program listens on `port` here (on any of this machine's addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise TunesmithError(f"--rdzv-endpoint {text!r} must look like HOST:PORT")
    return host, int(port)


def _wait_for_node_zero(endpoint: str, timeout_s: float) -> None:
    """Before this node joins: node 0's rendezvous store must accept connections within `timeout_s`.

    The launcher's own retries take minutes to give up on an address nobody listens at, and then
    say little; this names the address and what to check, in `timeout_s`. An unknown host fails at once.
    """
    host, port = _endpoint(endpoint)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise TunesmithError(f"--rdzv-endpoint {endpoint}: unknown host {host!r} ({error.strerror})") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                why = error.strerror or type(error).__name__
                raise TunesmithError(
                    f"--rdzv-endpoint {endpoint}: node 0 did not answer within {timeout_s:g} s ({why}); "
                    "start node 0 first, and check the address and that the port is open between the machines"
                ) from None
            time.sleep(0.2)


def launch(
    worker_args: list[str],
    nproc_per_node: int,
    nnodes: int,
    node_rank: int,
    rdzv_endpoint: str | None,
    rdzv_timeout_s: float,
) -> int:
    """Run `python -m tunesmith <worker_args>` on this node's processes through the elastic launcher.

    Returns the exit status: 0, 2 when a process stopped on a user error (it printed the line), else
    1 after one line naming the process that failed. A failure stops every process of the node at
    once (the launcher's own monitoring); on other nodes the collective timeout does.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and not rdzv_endpoint:
        raise TunesmithError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (an address of node 0)")
    if not 0 <= node_rank < nnodes:
        raise TunesmithError(f"--node-rank {node_rank} must be between 0 and --nnodes - 1 ({nnodes - 1})")
    if rdzv_endpoint:
        _, port = _endpoint(rdzv_endpoint)
        if node_rank == 0 and _port_taken(port):
            raise TunesmithError(f"--rdzv-endpoint {rdzv_endpoint}: port {port} is already in use on this machine")
        if node_rank > 0:
            _wait_for_node_zero(rdzv_endpoint, rdzv_timeout_s)
    # Each process gets its share of the cores (torch would give every one of them all the cores).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # The launcher's per-run folder (error files of failed processes) goes when the run does.
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as logs:
        launch_config = LaunchConfig(
            min_nodes=nnodes,
            max_nodes=nnodes,
            nproc_per_node=nproc_per_node,
            run_id="tunesmith",
            # One node: the rendezvous store takes a free port itself. Several: node 0 hosts it at the
            # endpoint and every node states its rank (what torchrun --node-rank does).
            rdzv_backend="static" if rdzv_endpoint else "c10d",
            rdzv_endpoint=rdzv_endpoint or "localhost:0",
            rdzv_configs={"rank": node_rank, "timeout": rdzv_timeout_s} if rdzv_endpoint else {},
            max_restarts=0,
            monitor_interval=0.5,
            start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(launch_config, entrypoint=sys.executable)("-m", "tunesmith", *worker_args)
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            if failure.exitcode == EXIT_USER_ERROR:
                return EXIT_USER_ERROR
            how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
            print(
                f"tunesmith: error: rank {rank} (pid {failure.pid}) failed ({how}); the other processes were "
                "stopped; continue from the last checkpoint with --resume",
                file=sys.stderr,
            )
            return 1
        except (RendezvousError, OSError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            where = rdzv_endpoint or "localhost"
            raise TunesmithError(f"could not join the other nodes at {where}: {first}") from None
    return 0
