"""Runs fine-tuning jobs: validates their files, starts each in its own subprocess, supervises it.

One background thread in the server process owns every trainer subprocess. Each tick it
1. tails each running job's ``metrics.jsonl`` into ``metrics`` events, turns new
   ``checkpoints/step-NNNNNN`` folders into checkpoint rows, updates ``estimated_finish``, stops
   the trainers of jobs cancelled or paused meanwhile, and fails a job past its wall-time cap;
2. reaps finished subprocesses (exit 0: register the model and the metrics CSV; exit 2: a user
   error, its stderr line becomes the job error; anything else: a crash, reported with its exit
   code and the last stderr line);
3. reconciles: a job marked ``running`` that no trainer of ours runs (the server restarted, or a
   launch was lost) is started again with ``--resume``, at most ``MAX_ATTEMPTS`` times in all;
4. hands each organisation's oldest ``validating_files`` job to the validation executor (line
   errors fail the job before any training; "auto" hyperparameters are resolved from the data
   size): tokenising a large file takes long, and this loop never waits for it;
5. starts queued jobs while fewer than ``max_running`` run: the organisation running fewest, then
   the one whose last job started longest ago (round-robin), then its oldest job. A job that ran
   before (paused, then resumed) continues from its last checkpoint.

A trainer runs in its own session (``start_new_session``: a process group of its own) so one
signal stops it and its children. It holds its run folder's lock (tunesmith.runfolder) for its
life: before a job is started again, a trainer still holding the lock (an orphan of a killed
server, or a wrapper's child) is killed with its group.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.paths import write_text_atomic
from tunesmith.runfolder import (
    CHECKPOINTS,
    METRICS,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
    checkpoint_path,
    checkpoint_steps,
    lock_holder,
    parse_metrics,
    read_metrics,
    read_summary,
)
from tunesmith.serve.errors import APIError
from tunesmith.serve.executors import FairExecutor
from tunesmith.serve.jobs.policy import (
    BASE_ENCODER_LR,
    BASE_LORA_LR,
    VAL_FRACTION,
    auto_eval_interval,
    group_size,
    resolve_hyperparameters,
    total_steps,
)
from tunesmith.serve.jobs.validate import DataCheck, check_graded_files, check_job_files, check_pair_files
from tunesmith.serve.names import is_encoder, root_base
from tunesmith.serve.redact import public
from tunesmith.serve.storage import disk_full
from tunesmith.serve.store import TERMINAL, Store, new_id, now

log = logging.getLogger("tunesmith.serve")


MAX_ATTEMPTS = 5  # trainer starts per job (the first, and resumes after a crash of the server)
STOP_GRACE_SECONDS = 3.0  # SIGTERM, then SIGKILL to a cancelled trainer's group


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "tunesmith", "train"]


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def openai_metrics(row: dict) -> dict:
    """A trainer metrics line in the names OpenAI's events and checkpoints use (extra keys kept)."""
    out = {
        "step": row.get("step"),
        "train_loss": row.get(TRAIN_LOSS),
        "train_mean_token_accuracy": row.get(TRAIN_ACCURACY),
    }
    if row.get(VAL_LOSS) is not None:
        out["valid_loss"] = row[VAL_LOSS]
        out["valid_mean_token_accuracy"] = row.get(VAL_ACCURACY)
    for key in ("epoch", "lr", "tokens_per_second", "grad_norm", "peak_rss_mb", *DPO_METRICS, *RL_METRICS):
        if key in row:
            out[key] = row[key]
    return out


# What a DPO job reports besides its loss (train/dpo.py names them).
DPO_METRICS = [f"{split}_{name}" for split in ("train", "val") for name in ("reward_accuracy", "reward_margin")]
# What a reinforcement job reports (train/grpo.py): the grader's mean reward and pass rate first.
RL_METRICS = [
    *(f"{split}_{name}" for split in ("train", "val") for name in ("reward", "reward_std", "pass_rate")),
    *(f"train_{name}" for name in ("kl", "clip_fraction", "answer_length", "rollout_seconds")),
    "val_answer_length",
]
# The result file's columns (OpenAI's step_metrics.csv) and the metrics they are read from.
CSV_COLUMNS = {
    "step": "step",
    "train_loss": TRAIN_LOSS,
    "train_accuracy": TRAIN_ACCURACY,
    "valid_loss": VAL_LOSS,
    "valid_mean_token_accuracy": VAL_ACCURACY,
}
RL_CSV_COLUMNS = {
    "train_reward": "train_reward",
    "train_pass_rate": "train_pass_rate",
    "valid_reward": "val_reward",
    "valid_pass_rate": "val_pass_rate",
}


def _reinforcement(hyper: dict) -> bool:
    return hyper.get("method") == "reinforcement"


def fine_tuned_model_name(job: dict) -> str:
    """``ft:{base}:{org-id}:{suffix}:{job-suffix}`` (empty suffix stays empty, as in OpenAI's names).

    The organisation's id, not a slug of its name: two organisations whose names slug alike never
    build the same model id."""
    # A model tuned from a fine-tuned one is named after the root base, as OpenAI names it.
    return f"ft:{root_base(job['model'])}:{job['org_id']}:{job['suffix'] or ''}:{job['id'][-8:]}"


def _trained_model(job: dict, out_dir: Path) -> tuple[Path, str]:
    """What a finished job serves and the file that shows it was written: a decoder's LoRA adapter,
    or an encoder's exported sentence-transformers folder (encoder jobs train all weights)."""
    if is_encoder(job["model"]):
        return out_dir / "merged", "config.json"
    return out_dir / "adapter", "adapter_config.json"


def _method(encoder: bool, hyper: dict) -> dict:
    """The config's method: OpenAI's supervised method is LoRA SFT on a decoder and contrastive
    fine-tuning on an encoder (the only way an embedding model learns from pairs)."""
    if encoder:
        return {"name": "full", "objective": "contrastive"}
    if _reinforcement(hyper):  # GRPO on a LoRA adapter (docs/reinforcement.md)
        return {"name": "grpo"}
    return {"name": "dpo", "beta": hyper["beta"]} if hyper.get("method") == "dpo" else {"name": "lora"}


@dataclass
class _Running:
    job_id: str
    org_id: str
    proc: subprocess.Popen
    out_dir: Path
    started: float
    start_step: int
    seen_checkpoints: set[int]
    stderr_path: Path
    stop_sent: float | None = None  # when SIGTERM went to a cancelled job's trainer


class Worker:
    def __init__(
        self,
        store: Store,
        trainer_command: list[str] | None = None,
        max_running: int = 1,
        poll_seconds: float = 0.5,
        train_overrides: list[str] | None = None,
        validation: FairExecutor | None = None,
        max_steps: int | None = None,
        max_seconds: float | None = None,
    ):
        self.store = store
        self._own_validation = validation is None  # a worker on its own (tests) makes and stops its own
        self.validation = validation or FairExecutor("validation", 1, 1)
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self._validating: dict[str, str] = {}  # job id -> organisation id, handed to the executor
        self._last_start: dict[str, float] = {}  # organisation id -> when its last job started
        self.trainer_command = trainer_command or default_trainer_command()
        self.max_running = max_running
        self.poll_seconds = poll_seconds
        self.train_overrides = list(train_overrides or [])
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarted = True  # until the first reconcile: a job marked running was left by a server before

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunesmith-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising; kill our trainers but leave their jobs ``running`` so a restart resumes."""
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            for run in self._running.values():
                _kill_group(run.proc.pid, signal.SIGKILL)
                run.proc.wait(timeout=10)
            self._running.clear()
        if self._own_validation:
            self.validation.shutdown()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self) -> None:
        """A job was cancelled: its trainer is stopped at the next tick, which this starts now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # never let one bad job stop the supervisor
                log.exception("worker tick failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            self._supervise(run)
        self._reconcile()
        self._dispatch_validations()
        queued = self.store.jobs_with_status("queued")
        while queued:
            with self._lock:
                if len(self._running) >= self.max_running or self._stopping.is_set():
                    break
            job = self._next_to_start(queued)
            queued.remove(job)
            self._launch(job, resume=job["started_at"] is not None)

    def _next_to_start(self, queued: list[dict]) -> dict:
        """The queued job of the organisation running fewest jobs, then of the one whose last job
        started longest ago, then the oldest: one organisation's long queue delays another's first
        job by at most one running slot."""
        with self._lock:
            running = Counter(run.org_id for run in self._running.values())
        return min(queued, key=lambda job: (running[job["org_id"]], self._last_start.get(job["org_id"], 0.0)))

    def _dispatch_validations(self) -> None:
        """Each organisation's oldest job waiting for validation, to the validation executor (one per
        organisation at a time; the executor serves organisations in turn)."""
        with self._lock:
            busy = set(self._validating.values())
        for job in self.store.jobs_with_status("validating_files"):
            if job["org_id"] in busy or self._stopping.is_set():
                continue
            try:
                future = self.validation.submit(job["org_id"], self._validate, job)
            except APIError:  # the organisation's validations are at their cap (a create's check): next tick
                continue
            busy.add(job["org_id"])
            with self._lock:
                self._validating[job["id"]] = job["org_id"]
            future.add_done_callback(lambda done, job_id=job["id"]: self._validated(job_id, done))

    def _validated(self, job_id: str, done) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("validating %s", job_id, exc_info=done.exception())
        with self._lock:
            self._validating.pop(job_id, None)
        self._wake.set()

    def _reconcile(self) -> None:
        """Jobs marked ``running`` that no trainer of ours runs: resume them, or fail them after
        ``MAX_ATTEMPTS`` starts. Before a resume, a trainer still holding the run folder (an orphan
        of a killed server) is killed with its process group."""
        for job in self.store.jobs_with_status("running"):
            with self._lock:
                if job["id"] in self._running or self._stopping.is_set():
                    continue
            out_dir = Path(job["run_dir"]) / "out"
            if lock_holder(out_dir) is not None and job["pid"]:
                _kill_group(job["pid"], signal.SIGKILL)
                deadline = time.monotonic() + 10
                while lock_holder(out_dir) is not None and time.monotonic() < deadline:
                    time.sleep(0.1)
            if (holder := lock_holder(out_dir)) is not None:
                self._fail(job["id"], "server_error", f"the run folder is still used by process {holder}")
                continue
            if job["attempts"] >= MAX_ATTEMPTS:
                self._fail(
                    job["id"],
                    "training_interrupted",
                    f"the trainer was interrupted {job['attempts']} times (server restarts or lost processes)",
                )
                continue
            steps = checkpoint_steps(out_dir)
            where = f"from the checkpoint at step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
            why = "Server restarted" if self._restarted else "The trainer process was lost"
            self.store.add_event(job["id"], f"{why}; resuming the job {where}")
            self._launch(job, resume=True)
        self._restarted = False

    # --- stages -------------------------------------------------------------------------------

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        message = public(message, self.store.home)  # a trainer's stderr, an exception: no server path
        error = {"code": code, "message": message, "param": param}
        if self.store.update_job(
            job_id,
            only_if_status=("validating_files", "queued", "running"),
            status="failed",
            error=error,
            finished_at=now(),
            estimated_finish=None,
            pid=None,
        ):
            self.store.add_event(job_id, f"Fine-tuning job failed: {message}", level="error")

    def _start_model(self, job: dict) -> str:
        """What the job trains from: a built-in model, or the merged weights of a fine-tuned model
        of its organisation (whose adapter then applies to those weights, not to the root base)."""
        row = self.store.model(job["org_id"], job["model"])
        return str(Path(row["adapter_path"]).parent / "merged") if row else job["model"]

    def _validate(self, job: dict) -> None:
        train = self.store.file(job["org_id"], job["training_file"])
        validation = self.store.file(job["org_id"], job["validation_file"]) if job["validation_file"] else None
        if train is None:
            return self._fail(
                job["id"],
                "invalid_training_file",
                f"training file {job['training_file']} was deleted",
                "training_file",
            )
        if job["validation_file"] and validation is None:
            return self._fail(
                job["id"],
                "invalid_validation_file",
                f"validation file {job['validation_file']} was deleted",
                "validation_file",
            )
        try:
            check = self.check_files(job, train, validation)
        except Exception as error:  # a bug or an unreadable tokenizer: fail this job only
            log.exception("validating %s", job["id"])
            return self._fail(job["id"], "validation_error", f"could not validate the files: {error}")
        if not check.ok:
            code = "invalid_training_file" if check.param == "training_file" else "invalid_validation_file"
            return self._fail(job["id"], code, check.message, check.param)
        for warning in check.warnings:
            self.store.add_event(job["id"], public(warning, self.store.home), level="warn")
        if not check.n_validation:  # without a validation file the trainer holds out VAL_FRACTION
            return self._fail(
                job["id"],
                "invalid_training_file",
                f"training_file {train['id']} ({train['filename']}) has {check.n_examples} example; give "
                "a validation_file or at least 2 training examples",
                "training_file",
            )
        hyper = resolve_hyperparameters(
            job["hyperparameters"], check.n_examples, is_encoder(job["model"]), n_train=check.n_train
        )
        steps = total_steps(hyper, check.n_train)
        if self.max_steps is not None and steps > self.max_steps:
            return self._fail(
                job["id"],
                "job_step_limit",
                f"the job would train {steps} steps ({check.n_train} examples, batch_size "
                f"{hyper['batch_size']}, n_epochs {hyper['n_epochs']}); this server trains at most "
                f"{self.max_steps} steps per job: lower n_epochs or raise batch_size",
            )
        if self.store.update_job(
            job["id"],
            only_if_status=("validating_files",),
            status="queued",
            hyperparameters=hyper,
            total_steps=steps,
        ):
            graded = ""
            if _reinforcement(hyper):
                graded = (
                    f", compute_multiplier={hyper['compute_multiplier']} ({group_size(hyper['compute_multiplier'])} "
                    f"answers per prompt), eval_interval={hyper['eval_interval']}, "
                    f"eval_samples={hyper['eval_samples']}"
                )
            self.store.add_event(
                job["id"],
                f"Validated training file: {check.n_examples} examples"
                + (f", validation file: {check.n_validation} examples" if validation else "")
                + f"; hyperparameters: n_epochs={hyper['n_epochs']}, batch_size={hyper['batch_size']}, "
                f"learning_rate_multiplier={hyper['learning_rate_multiplier']}{graded} ({steps} steps)",
            )
            self._wake.set()

    def check_files(self, job: dict, train: dict, validation: dict | None) -> DataCheck:
        """The job's files (rows of the store) read by its trainer's own readers, on the data
        settings and seed its config will have."""
        # Batch size, epochs and the rollouts' budget do not change the data settings.
        sizing = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0, "beta": 0.1}
        sizing |= {"compute_multiplier": 1.0, "eval_interval": 1, "eval_samples": 1}
        config = self._job_config(job, {**job["hyperparameters"], **sizing}, 1)
        if is_encoder(job["model"]):
            return check_pair_files(train, validation, config.data, config.train.seed)
        if _reinforcement(job["hyperparameters"]):
            grader = job["hyperparameters"]["grader"]
            return check_graded_files(train, validation, grader, config.data, config.train.seed)
        dpo = job["hyperparameters"].get("method") == "dpo"
        return check_job_files(train, validation, self._start_model(job), config.data, config.train.seed, pairs=dpo)

    def _job_config(self, job: dict, hyper: dict, total: int):
        """The trainer's Config for `job` with resolved hyperparameters `hyper` and `total` steps."""
        from tunesmith.config import apply_overrides, config_from_dict

        encoder = is_encoder(job["model"])
        train = self.store.file(job["org_id"], job["training_file"])
        validation = self.store.file(job["org_id"], job["validation_file"]) if job["validation_file"] else None
        raw = {
            "model": self._start_model(job),
            "data": {
                "train": train["path"],
                "validation": validation["path"] if validation else None,
                "val_fraction": VAL_FRACTION,
                "cache_namespace": job["org_id"],  # an organisation's token stores are its own
            },
            "method": _method(encoder, hyper),
            "train": {
                "epochs": hyper["n_epochs"],
                "batch_size": hyper["batch_size"],
                "lr": (BASE_ENCODER_LR if encoder else BASE_LORA_LR) * hyper["learning_rate_multiplier"],
                "seed": job["seed"],
                # ~100 metrics lines, ~10 evaluations and ~5 checkpoints per run, whatever its length
                "log_every": math.ceil(total / 100),
                "eval_every": hyper.get("eval_interval") or auto_eval_interval(total),
                "save_every": math.ceil(total / 5),
                "warmup_steps": min(10, total // 10),
            },
            "eval": {"samples": 0},  # the before/after sample table is for the CLI; the API has events
            "out_dir": str(Path(job["run_dir"]) / "out"),
        }
        overrides = list(self.train_overrides)
        if _reinforcement(hyper):
            raw["rl"] = {
                "grader": hyper["grader"],
                "group_size": group_size(hyper["compute_multiplier"]),
                "eval_samples": hyper["eval_samples"],
            }
        else:  # the rl section is GRPO's: an rl.* override of the server applies to reinforcement jobs only
            overrides = [o for o in overrides if not o.startswith("rl.")]
        for integration in job.get("integrations") or []:  # OpenAI's integrations: only wandb exists
            raw["train"]["report_to"] = ["wandb"]
            raw["train"]["wandb"] = {"name": job["id"], **integration["wandb"]}
        return config_from_dict(apply_overrides(raw, overrides), "job config")

    def _write_config(self, job: dict) -> Path:
        from tunesmith.config import dump_config

        config = self._job_config(job, job["hyperparameters"], max(1, job["total_steps"] or 1))
        path = Path(job["run_dir"]) / "config.yaml"
        write_text_atomic(path, dump_config(config))
        return path

    def _launch(self, job: dict, resume: bool) -> None:
        run_dir = Path(job["run_dir"])
        out_dir = run_dir / "out"
        try:
            config = self._write_config(job)
        except Exception as error:
            return self._fail(job["id"], "invalid_request", f"could not build the training config: {error}")
        steps = checkpoint_steps(out_dir)
        flag = "--resume" if resume and steps else "--overwrite"
        stderr_path = run_dir / "stderr.log"
        try:  # the logs' first write fails on a full disk, as the start itself can
            with open(run_dir / "train.log", "ab") as stdout, open(stderr_path, "ab") as stderr:
                stderr.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {flag}\n".encode())
                stderr.flush()
                proc = subprocess.Popen(
                    [*self.trainer_command, str(config), flag, *_procs_flag(job["procs"])],
                    cwd=run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    # A process group of its own, so one signal stops its children too. Not
                    # preexec_fn: it can deadlock Popen in a threaded program.
                    start_new_session=True,
                )
        except OSError as error:
            return self._not_started(job, error)
        self._last_start[job["org_id"]] = time.monotonic()
        fields = {"status": "running", "pid": proc.pid, "attempts": job["attempts"] + 1}
        if not job["started_at"]:
            fields["started_at"] = now()
        if not self.store.update_job(job["id"], only_if_status=("queued", "running"), **fields):
            _kill_group(proc.pid, signal.SIGKILL)  # cancelled meanwhile
            proc.wait()
            return
        seen = {c["step"] for c in self.store.list_checkpoints(job["id"], None, 10_000)}
        with self._lock:
            self._running[job["id"]] = _Running(
                job["id"],
                job["org_id"],
                proc,
                out_dir,
                time.monotonic(),
                steps[-1] if (resume and steps) else 0,
                seen,
                stderr_path,
            )
        if not job["started_at"]:
            on = f" on {job['procs']} processes" if job["procs"] > 1 else ""
            self.store.add_event(job["id"], f"Fine-tuning job started{on}", data={"procs": job["procs"]})
        elif job["status"] == "queued":  # resumed after a pause
            where = f"from the checkpoint at step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
            self.store.add_event(job["id"], f"Fine-tuning job continues {where}")

    def _not_started(self, job: dict, error: OSError) -> None:
        """The trainer could not start: the attempt counts (a resumed job is not retried forever);
        after ``MAX_ATTEMPTS`` the job fails, before that the next cycle tries again."""
        attempts = job["attempts"] + 1
        message = f"could not start the trainer: {error}"
        if attempts >= MAX_ATTEMPTS or not disk_full(error):  # only a full disk may free up meanwhile
            return self._fail(job["id"], "server_error", message)
        self.store.update_job(job["id"], only_if_status=("queued", "running"), attempts=attempts)
        log.warning("%s (attempt %d of %d)", message, attempts, MAX_ATTEMPTS)

    def _tail_metrics(self, run: _Running, job: dict) -> None:
        path = run.out_dir / METRICS
        if not path.is_file():
            return
        offset = job["metrics_offset"]
        size = path.stat().st_size
        if size < offset:  # the trainer rewrote the file on resume: reread, skipping known steps
            offset = 0
        if size == offset:
            return
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; a half-written one waits for the next tick
        last_step = job["last_metrics_step"]
        total = job["total_steps"]
        for row in parse_metrics(chunk[:end].decode("utf-8", errors="replace")):
            step = row["step"]
            if step <= last_step:
                continue
            last_step = step
            data = openai_metrics(row)
            self.store.add_event(job["id"], _step_text(data, step, total), type="metrics", data=data)
        fields = {"metrics_offset": offset + end, "last_metrics_step": last_step}
        done = last_step - run.start_step
        if total and done > 0:
            per_step = (time.monotonic() - run.started) / done
            fields["estimated_finish"] = now() + int(per_step * max(0, total - last_step))
        self.store.update_job(job["id"], **fields)

    def _watch_checkpoints(self, run: _Running, job: dict) -> None:
        new = [s for s in checkpoint_steps(run.out_dir) if s not in run.seen_checkpoints]
        if not new:
            return
        metrics = read_metrics(run.out_dir)
        model = fine_tuned_model_name(job)
        for step in new:
            run.seen_checkpoints.add(step)
            before = [m for m in metrics if m["step"] <= step]
            data = openai_metrics(before[-1]) if before else {"step": step}
            data["step"] = step
            path = checkpoint_path(run.out_dir / CHECKPOINTS, step)
            if self.store.add_checkpoint(job["id"], step, data, str(path), f"{model}:ckpt-step-{step}"):
                self.store.add_event(job["id"], f"Checkpoint created at step {step}")

    def _supervise(self, run: _Running) -> None:
        job = self.store.job(None, run.job_id)
        code = run.proc.poll()
        if job is not None and job["status"] == "running" and code is None and self._out_of_time(run, job):
            job = self.store.job(None, run.job_id)
        if job is None or job["status"] in (*TERMINAL, "paused"):  # cancelled, paused (or deleted) while running
            if code is None:
                self._stop(run)
                return
            self._end(run, job)
            if job is not None:
                self.store.update_job(run.job_id, pid=None)
            return
        self._tail_metrics(run, job)
        self._watch_checkpoints(run, job)
        if code is None:
            return
        self._end(run, job)
        job = self.store.job(None, run.job_id)
        if code == 0:
            try:
                self._finish(job, run)
            except Exception as error:  # a full disk, a database error: the job must not stay running
                log.exception("registering the outputs of %s", job["id"])
                self._fail(job["id"], "server_error", f"could not register the trained model: {error}")
        elif code == 2:
            message = self._stderr_tail(run, job)
            param = None
            if self.store.file(job["org_id"], job["training_file"]) and job["training_file"] in message:
                param = "training_file"
            elif job["validation_file"] and job["validation_file"] in message:
                param = "validation_file"
            self._fail(job["id"], "invalid_request", message or "the trainer refused the job", param)
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            tail = self._stderr_tail(run, job)
            self._fail(job["id"], "training_crashed", f"the training process {how}" + (f": {tail}" if tail else ""))
        self._wake.set()

    def _train_seconds(self, run: _Running, job: dict) -> float:
        """The job's training wall time: its earlier runs' and this one's so far."""
        return job["train_seconds"] + time.monotonic() - run.started

    def _out_of_time(self, run: _Running, job: dict) -> bool:
        """Fail a job past ``max_seconds`` of training (its trainer is stopped as a cancelled one's)."""
        if self.max_seconds is None or self._train_seconds(run, job) <= self.max_seconds:
            return False
        self._fail(
            job["id"],
            "job_time_limit",
            f"the job trained for more than {self.max_seconds:.0f} s, the most this server allows per job",
        )
        return True

    def _end(self, run: _Running, job: dict | None) -> None:
        """A trainer has exited: forget it, and add its wall time to the job's."""
        with self._lock:
            self._running.pop(run.job_id, None)
        if job is not None:
            self.store.update_job(run.job_id, train_seconds=self._train_seconds(run, job))

    @staticmethod
    def _stop(run: _Running) -> None:
        """SIGTERM to the trainer's group, SIGKILL once the grace period has passed."""
        if run.stop_sent is None:
            run.stop_sent = time.monotonic()
            _kill_group(run.proc.pid, signal.SIGTERM)
        elif time.monotonic() - run.stop_sent > STOP_GRACE_SECONDS:
            _kill_group(run.proc.pid, signal.SIGKILL)

    def _stderr_tail(self, run: _Running, job: dict) -> str:
        """The last non-empty stderr line of this attempt, with stored file paths replaced by ids."""
        try:
            text = run.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.split("\n=== ")[-1].splitlines()[1:] if ln.strip()]
        message = lines[-1] if lines else ""
        for file_id in (job["training_file"], job["validation_file"]):
            row = self.store.file(job["org_id"], file_id) if file_id else None
            if row:
                message = message.replace(row["path"], f"{file_id} ({row['filename']})")
        return message[:2000]

    def _finish(self, job: dict, run: _Running) -> None:
        weights, marker = _trained_model(job, run.out_dir)
        if not (weights / marker).is_file():
            return self._fail(
                job["id"], "training_crashed", f"the trainer exited without writing {weights.name}/{marker}"
            )
        summary = read_summary(run.out_dir) or {}
        csv_path = self.store.files_dir / f"{new_id('file-')}.csv"
        file_id = csv_path.stem
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = CSV_COLUMNS | (RL_CSV_COLUMNS if _reinforcement(job["hyperparameters"]) else {})
        writer.writerow(columns)
        for row in read_metrics(run.out_dir):
            # A step without a value is empty: no evaluation at that step, no token accuracy in GRPO.
            writer.writerow([row.get(key) for key in columns.values()])
        write_text_atomic(csv_path, buffer.getvalue())
        self.store.add_file(
            file_id,
            job["org_id"],
            "step_metrics.csv",
            "fine-tune-results",
            csv_path.stat().st_size,
            str(csv_path),
        )
        model = fine_tuned_model_name(job)
        final_step = summary.get("steps") or job["last_metrics_step"]
        if final_step and final_step not in run.seen_checkpoints:  # the final model is a checkpoint too
            rows = [m for m in read_metrics(run.out_dir) if m["step"] <= final_step]
            data = {**(openai_metrics(rows[-1]) if rows else {}), "step": final_step}
            self.store.add_checkpoint(job["id"], final_step, data, str(weights), f"{model}:ckpt-step-{final_step}")
        self.store.add_model(model, job["org_id"], job["id"], self._start_model(job), str(weights))
        if self.store.update_job(
            job["id"],
            only_if_status=("running",),
            status="succeeded",
            fine_tuned_model=model,
            trained_tokens=summary.get("trained_tokens"),
            result_files=[file_id],
            finished_at=now(),
            estimated_finish=None,
            pid=None,
        ):
            self.store.add_event(job["id"], f"New fine-tuned model created: {model}")
            self.store.add_event(job["id"], "The job has successfully completed")
        else:
            self.store.delete_model(job["org_id"], model)


def _step_text(data: dict, step: int, total: int | None) -> str:
    """A metrics event's message: "Step 3/10: training loss=0.4121, reward=0.5000, pass rate=0.50, ..."."""
    shown = [
        ("training loss", "train_loss", ".4f"),
        ("reward", "train_reward", ".4f"),
        ("pass rate", "train_pass_rate", ".2f"),
        ("validation loss", "valid_loss", ".4f"),
        ("validation reward", "val_reward", ".4f"),
        ("validation pass rate", "val_pass_rate", ".2f"),
    ]
    if "val_reward" in data:  # GRPO's validation loss is minus its reward: said once is enough
        shown.remove(("validation loss", "valid_loss", ".4f"))
    parts = [f"{name}={data[key]:{spec}}" for name, key, spec in shown if isinstance(data.get(key), (int, float))]
    return f"Step {step}" + (f"/{total}" if total else "") + (": " + ", ".join(parts) if parts else "")


def parse_trainer_command(text: str | None) -> list[str] | None:
    return shlex.split(text) if text else None


def _procs_flag(procs: int) -> list[str]:
    """The job trains on the processes it was created for, even after a restart with another setting."""
    return [f"--nproc-per-node={procs}"] if procs > 1 else []
