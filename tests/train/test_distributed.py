"""Two gloo processes on the tiny model against one process taking the same steps.

A step's examples do not depend on the number of processes, and the loss is normalised by the
label tokens of the whole step: 2 processes x grad_accum 1 and 1 process x grad_accum 2 must
take the same steps, up to float32 summation order.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import dump_config
from tunesmith.errors import TunesmithError
from tunesmith.precision import bf16_supported
from tunesmith.train.recipe import train

STEPS = {"max_steps": 4, "save_every": 2, "eval_every": 100, "log_every": 1}
LAUNCH_TIMEOUT_S = 240

# Loaded by every Python process started with this folder on PYTHONPATH: rank 1 dies by SIGKILL
# right after the first checkpoint is complete, and notes the time.
KILL_RANK_1 = """
import os, signal, time
if os.environ.get("RANK") == "1":
    import tunesmith.train.run as run
    saved = run.save_checkpoint
    def save_then_die(*args, **kwargs):
        path = saved(*args, **kwargs)
        with open(os.environ["KILLED_AT_FILE"], "w") as fh:
            fh.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    run.save_checkpoint = save_then_die
"""


def _config(make_tiny_config, out_dir, method="lora", grad_accum=1):
    methods = {"lora": {"dropout": 0.0}, "full": {"name": "full"}}
    lr = {"lora": 5e-3, "full": 1e-3}[method]
    return make_tiny_config(
        out_dir,
        method=methods[method],
        train={**STEPS, "grad_accum": grad_accum, "lr": lr},
        eval={"samples": 1, "max_new_tokens": 4},
    )


def _launch(cfg, *args, env=None, timeout=LAUNCH_TIMEOUT_S, nproc=2):
    config_file = Path(cfg.out_dir).with_suffix(".yaml")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(dump_config(cfg))
    command = [sys.executable, "-m", "tunesmith", "train", str(config_file), f"--nproc-per-node={nproc}", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _train_losses(out_dir) -> list[float]:
    return [m["train_loss"] for m in _metrics(out_dir) if "train_loss" in m]


def _max_abs_diff(a_file, b_file) -> float:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def lora_runs(make_tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    two = _config(make_tiny_config, root / "two", grad_accum=1)
    _ok(_launch(two))
    one = _config(make_tiny_config, root / "one", grad_accum=2)
    train(one)
    return root


def test_lora_on_two_processes_takes_the_same_steps_as_one_process_accumulating_two(lora_runs):
    two, one = lora_runs / "two", lora_runs / "one"
    assert _train_losses(two) == pytest.approx(_train_losses(one), rel=1e-5)
    assert len(_train_losses(two)) == 4
    assert _max_abs_diff(two / "adapter/adapter_model.safetensors", one / "adapter/adapter_model.safetensors") <= 1e-5
    last_two, last_one = _metrics(two)[-1], _metrics(one)[-1]
    assert (last_two["world_size"], last_one["world_size"]) == (2, 1)
    assert last_two["trained_tokens"] == last_one["trained_tokens"]  # global, not rank 0's share
    assert last_two["val_loss"] == pytest.approx(last_one["val_loss"], rel=1e-5)  # shared, all-reduced
    # The exported formats do not change with the number of processes.
    for folder in ("adapter", "merged"):
        assert sorted(p.name for p in (two / folder).iterdir()) == sorted(p.name for p in (one / folder).iterdir())


def test_bf16_lora_keeps_lean_storage_and_the_arena_under_ddp(make_tiny_config, tmp_path):
    """A bf16 LoRA run stores its frozen base in bf16 (LeanStorage) and, on CPU, its activations in
    the arena: under DDP too, with the steps of one process (bf16 rounding differs with the split)."""
    bf16 = {**STEPS, "max_steps": 2, "save_every": 100, "dtype": "bfloat16"}

    def config(name, grad_accum):
        train_section = {**bf16, "grad_accum": grad_accum}
        return make_tiny_config(tmp_path / name, method={"dropout": 0.0}, train=train_section, eval={"samples": 0})

    result = _launch(config("two", 1))
    _ok(result)
    train(config("one", 2))
    assert _train_losses(tmp_path / "two") == pytest.approx(_train_losses(tmp_path / "one"), rel=1e-2)
    # Where bf16 is emulated the user is told, once (rank 0 speaks).
    emulated = not bf16_supported(torch.device("cpu"))
    assert result.stderr.count("matmuls are emulated") == (1 if emulated else 0)


def test_full_fine_tuning_shards_state_with_fsdp2_and_takes_the_same_steps(make_tiny_config, tmp_path):
    two = _config(make_tiny_config, tmp_path / "two", method="full", grad_accum=1)
    result = _launch(two)
    _ok(result)
    one = _config(make_tiny_config, tmp_path / "one", method="full", grad_accum=2)
    train(one)
    assert "2 processes (fsdp)" in result.stderr
    assert _train_losses(tmp_path / "two") == pytest.approx(_train_losses(tmp_path / "one"), rel=1e-4)
    # The tied embedding is split by vocabulary rows: argmax hits are counted across the split.
    hits = {r: [m["train_accuracy"] for m in _metrics(tmp_path / r) if "train_loss" in m] for r in ("two", "one")}
    assert hits["two"] == pytest.approx(hits["one"], abs=0.011)  # one near-tie may fall either way
    diff = _max_abs_diff(tmp_path / "two/merged/model.safetensors", tmp_path / "one/merged/model.safetensors")
    assert diff <= 1e-4
    # Trained weights and AdamW state held by each process between steps: half of one process's.
    held_two, held_one = _metrics(tmp_path / "two")[-1]["state_mb"], _metrics(tmp_path / "one")[-1]["state_mb"]
    assert 0.45 <= held_two / held_one <= 0.55
    # The step-2 checkpoints (sharded weights, the split embedding, AdamW state) resume at the other
    # world size: 2 -> 1 and 1 -> 2.
    shutil.copytree(tmp_path / "two", tmp_path / "two_on_one")
    train(_config(make_tiny_config, tmp_path / "two_on_one", method="full", grad_accum=2), resume=True)
    shutil.copytree(tmp_path / "one", tmp_path / "one_on_two")
    _ok(_launch(_config(make_tiny_config, tmp_path / "one_on_two", method="full", grad_accum=1), "--resume"))
    for resumed in ("two_on_one", "one_on_two"):
        diff = _max_abs_diff(tmp_path / resumed / "merged/model.safetensors", tmp_path / "two/merged/model.safetensors")
        assert diff <= 1e-4


def test_dpo_on_all_weights_under_fsdp2_takes_the_same_steps(make_tiny_config, write_pairs, tmp_path):
    """The reference log-probs are computed before FSDP2 shards the model; the DPO loss is normalised
    by the pairs of the whole step; validation is shared: the same steps as one process."""
    data = {
        "train": str(write_pairs(tmp_path / "train.jsonl", 24, openai=True)),
        "validation": str(write_pairs(tmp_path / "val.jsonl", 5, openai=False)),
    }

    def config(name, grad_accum):
        return make_tiny_config(
            tmp_path / name,
            data=data,
            method={"name": "dpo", "weights": "full", "beta": 0.5},
            train={**STEPS, "max_steps": 3, "save_every": 100, "grad_accum": grad_accum, "lr": 1e-3},
            eval={"samples": 0},
        )

    result = _launch(config("two", 1))
    _ok(result)
    train(config("one", 2))
    assert "2 processes (fsdp)" in result.stderr
    two, one = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert [m["train_loss"] for m in two if "train_loss" in m] == pytest.approx(
        [m["train_loss"] for m in one if "train_loss" in m], rel=1e-4
    )
    assert two[-1]["val_reward_margin"] == pytest.approx(one[-1]["val_reward_margin"], rel=1e-3)
    diff = _max_abs_diff(tmp_path / "two/merged/model.safetensors", tmp_path / "one/merged/model.safetensors")
    assert diff <= 1e-4


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_killed_rank_stops_the_run_and_it_resumes_on_one_or_two_processes(lora_runs, make_tiny_config, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_RANK_1)
    killed_at = tmp_path / "killed_at"
    killed = _config(make_tiny_config, tmp_path / "killed", grad_accum=1)
    env = {
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
        "KILLED_AT_FILE": str(killed_at),
    }
    result = _launch(killed, env=env)
    ended = time.time()
    assert result.returncode == 1
    assert "rank 1" in result.stderr and "SIGKILL" in result.stderr and "--resume" in result.stderr
    assert ended - float(killed_at.read_text()) < 60
    assert _processes_mentioning(str(tmp_path / "killed")) == []
    assert [p.name for p in (tmp_path / "killed/checkpoints").iterdir() if p.name.startswith("step-")] == [
        "step-000002"
    ]
    assert not (tmp_path / "killed/merged").exists()
    shutil.copytree(tmp_path / "killed", tmp_path / "again")

    # The examples of a step depend on how many a step takes: a resume that changes it is refused.
    with pytest.raises(TunesmithError, match="took 8 examples per step .* would take 4"):
        train(_config(make_tiny_config, tmp_path / "killed", grad_accum=1), resume=True)
    # 2 -> 1: one process accumulating two micro-batches.
    train(_config(make_tiny_config, tmp_path / "killed", grad_accum=2), resume=True)
    # 2 -> 2
    _ok(_launch(_config(make_tiny_config, tmp_path / "again", grad_accum=1), "--resume"))

    straight = lora_runs / "two" / "adapter/adapter_model.safetensors"
    for resumed in ("killed", "again"):
        assert _max_abs_diff(tmp_path / resumed / "adapter/adapter_model.safetensors", straight) <= 1e-5
        assert _train_losses(tmp_path / resumed) == pytest.approx(_train_losses(lora_runs / "two"), rel=1e-5)


def test_a_one_process_checkpoint_resumes_on_two(lora_runs, make_tiny_config, tmp_path):
    shutil.copytree(lora_runs / "one", tmp_path / "one")
    # Finished at step 4; its last checkpoint is step 2: steps 3 and 4 again, now on 2 processes.
    _ok(_launch(_config(make_tiny_config, tmp_path / "one", grad_accum=1), "--resume"))
    diff = _max_abs_diff(
        tmp_path / "one/adapter/adapter_model.safetensors", lora_runs / "one/adapter/adapter_model.safetensors"
    )
    assert diff <= 1e-5


def test_a_port_in_use_is_one_clear_error(make_tiny_config, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config(make_tiny_config, tmp_path / "run")
        result = _launch(cfg, "--nnodes=2", "--node-rank=0", f"--rdzv-endpoint=127.0.0.1:{port}", nproc=1)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tunesmith: error: --rdzv-endpoint 127.0.0.1:{port}: port {port} is already in use on this machine"
    ]


def test_an_unreachable_rendezvous_is_one_clear_error_within_its_timeout(make_tiny_config, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nobody listens there
    cfg = _config(make_tiny_config, tmp_path / "run")
    started = time.monotonic()
    args = ("--nnodes=2", "--node-rank=1", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-timeout=2")
    result = _launch(cfg, *args, nproc=1)
    assert result.returncode == 2
    assert time.monotonic() - started < 30  # the launcher's own retries took 140 s
    assert result.stderr.strip().splitlines() == [
        f"tunesmith: error: --rdzv-endpoint 127.0.0.1:{port}: node 0 did not answer within 2 s (Connection "
        "refused); start node 0 first, and check the address and that the port is open between the machines"
    ]
    assert not (tmp_path / "run").exists()


def test_an_unknown_rendezvous_host_fails_at_once(make_tiny_config, tmp_path):
    cfg = _config(make_tiny_config, tmp_path / "run")
    args = ("--nnodes=2", "--node-rank=1", "--rdzv-endpoint=no-such-host.invalid:29500")
    result = _launch(cfg, *args, nproc=1)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    expected = "tunesmith: error: --rdzv-endpoint no-such-host.invalid:29500: unknown host 'no-such-host.invalid'"
    assert line.startswith(expected)


def test_nodes_with_different_configs_refuse_to_train(make_tiny_config, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = []
    for node, lr in ((0, 1e-3), (1, 2e-3)):
        cfg = make_tiny_config(tmp_path / f"node{node}" / "run", train={**STEPS, "lr": lr}, eval={"samples": 0})
        config_file = tmp_path / f"node{node}.yaml"
        config_file.write_text(dump_config(cfg.model_copy(update={"out_dir": str(tmp_path / "run")})))
        command = [sys.executable, "-m", "tunesmith", "train", str(config_file), "--nnodes=2"]
        command += [f"--node-rank={node}", f"--rdzv-endpoint=127.0.0.1:{port}"]
        nodes.append(
            subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        )
    for process in nodes:
        _, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert process.returncode == 2
        assert "the processes were given different configs" in stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "lengths, parts, expected",
    [
        ([5, 5, 5, 5], 2, [[0, 2], [1, 3]]),
        ([100, 1, 1, 1, 1, 96], 2, [[0], [1, 2, 3, 4, 5]]),  # by tokens, not by count
        ([3, 9, 4], 1, [[0, 1, 2]]),  # one process: everything, in order
        ([7], 2, [[0], []]),  # a short last step can leave a process without examples
    ],
)
def test_a_step_is_split_across_processes_by_tokens(lengths, parts, expected):
    from tunesmith.train.distributed import split_by_tokens

    assert split_by_tokens(lengths, parts) == expected


def test_ranks_with_very_different_label_counts_give_one_process_gradient(tiny_config):
    """What DDP computes (the mean over processes of loss_sum x world_size / global labels), done here
    rank by rank in one process, equals one process's gradient although the ranks' label counts differ."""
    from tunesmith.data.tokenize import TokenizedExample
    from tunesmith.data.views import Listed
    from tunesmith.models import load_model
    from tunesmith.train.distributed import Dist, LossModule
    from tunesmith.train.objective import SFTObjective
    from tunesmith.train.recipe import StepBatches, attach_method

    cfg = tiny_config(method={"dropout": 0.0}, train={"batch_size": 4, "grad_accum": 1})
    loaded = load_model(cfg.model)
    torch.manual_seed(0)
    objective = SFTObjective(cfg, 0, torch.device("cpu"))
    module = LossModule(attach_method(loaded.model, cfg), objective)
    for p in module.parameters():  # LoRA B starts at zero; give the adapter a non-trivial state
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    # One long, all but unlabelled example weighs as much as seven short labelled ones: by tokens,
    # rank 0 gets the long one alone, rank 1 the seven.
    ids = torch.randint(10, 1000, (140,), generator=torch.Generator().manual_seed(0)).tolist()
    examples = [TokenizedExample(ids, [-100] * 137 + ids[-3:], 0, 140)]
    examples += [TokenizedExample(ids[i * 20 : (i + 1) * 20], ids[i * 20 : (i + 1) * 20], i, 20) for i in range(7)]

    def gradient(world_size, grad_accum):
        module.zero_grad()
        step_cfg = cfg.model_copy(deep=True)
        step_cfg.train.grad_accum = grad_accum
        labels = []
        for rank in range(world_size):
            step = StepBatches(Listed(examples), step_cfg, objective, 1, Dist(rank, world_size))(0)
            labels.append(sum(b.n_label_tokens for b in step.batches))
            objective.start_step(step.items)
            for batch in step.batches:
                (module(batch)[0] * world_size).backward()
        grads = {n: p.grad.clone() / world_size for n, p in module.named_parameters() if p.requires_grad}
        return grads, labels

    one, _ = gradient(1, 2)
    two, labels = gradient(2, 1)
    assert max(labels) > 2 * min(labels)
    assert all(torch.allclose(one[n], two[n], rtol=1e-5, atol=1e-8) for n in one)
