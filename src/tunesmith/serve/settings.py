"""What `tunesmith serve` is configured with (its command-line options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # JSON bodies: a long chat history fits many times over


@dataclass(frozen=True)
class PoolLimits:
    """One kind of blocking work's own threads, and the calls one organisation may have admitted."""

    threads: int
    per_org: int
    help: str  # what the work is, for the command's help text


# Each kind runs in an executor of its own (serve/executors.py); the CLI offers --KIND-threads and
# --KIND-per-org for each.
DEFAULT_POOLS = {
    "embeddings": PoolLimits(2, 2, "/v1/embeddings requests"),
    "exports": PoolLimits(1, 1, "GGUF exports (/v1/models/ID/content on a model not exported yet)"),
    "upload-checks": PoolLimits(2, 2, "checks of uploaded files (every line read as JSON)"),
    "validation": PoolLimits(1, 2, "validations of a new job's files (tokenised whole)"),
}


@dataclass
class ServeSettings:
    home: Path
    trainer_command: list[str] | None = None  # argv before "CONFIG --overwrite|--resume"
    max_running: int = 1
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    train_overrides: list[str] = field(default_factory=list)  # dotted config overrides for every job
    max_adapters: int = 4
    poll_seconds: float = 0.5
    procs_per_job: int = 1  # training processes per job (tunesmith train --nproc-per-node)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_active_jobs_per_org: int = 20  # validating, queued, running or paused
    max_job_steps: int | None = None  # a job that would train more steps fails at validation
    max_job_seconds: float | None = None  # training wall time of one job, all its runs together
    max_inference_per_org: int = 4
    inference_threads: int = 2
    generation_timeout: float = 120.0  # seconds one generation may compute, from its first token on
    inference_queue_timeout: float = 30.0  # seconds a request may wait for a thread and its model
    max_loaded_models: int = 1  # base models kept loaded (least recently used dropped)
    pools: dict[str, PoolLimits] = field(default_factory=lambda: dict(DEFAULT_POOLS))
    storage_quota: int | None = None  # bytes of files one organisation may store (None: no quota)
    max_files: int | None = None  # files one organisation may store
    min_free_disk: int = 0  # bytes that must stay free on the home's disk for new uploads and jobs
    keep_failed_runs: float | None = None  # seconds failed/cancelled runs and GGUF exports are kept
