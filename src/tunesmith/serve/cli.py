"""``tunesmith serve`` and ``tunesmith keys create|list|revoke``: the service's command-line front.

The main CLI calls :func:`add_serve_commands` with its subparsers; each registered parser has a
``func`` default (as in tunesmith.cli) taking the parsed namespace and returning an exit code. ``python -m
tunesmith.serve.cli ...`` runs the same commands on their own (the tests use that).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SHUTDOWN_GRACE_SECONDS = 5
GIL_SWITCH_SECONDS = 0.001


def default_home() -> Path:
    from tunesmith.paths import tunesmith_home

    return tunesmith_home() / "serve"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.jobs.supervisor import parse_trainer_command
    from tunesmith.serve.settings import DEFAULT_POOLS, PoolLimits, ServeSettings

    pools = {
        kind: PoolLimits(getattr(args, _dest(kind, "threads")), getattr(args, _dest(kind, "per_org")), default.help)
        for kind, default in DEFAULT_POOLS.items()
    }
    settings = ServeSettings(
        home=Path(args.home or default_home()),
        trainer_command=parse_trainer_command(args.trainer_command),
        max_running=args.max_running,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        train_overrides=list(args.train_override or []),
        max_adapters=args.max_adapters,
        procs_per_job=args.procs_per_job,
        max_body_bytes=int(args.max_body_kb * 1024),
        max_active_jobs_per_org=args.max_jobs_per_org,
        max_job_steps=args.max_job_steps,
        max_job_seconds=args.max_job_minutes * 60 if args.max_job_minutes else None,
        max_inference_per_org=args.max_inference_per_org,
        inference_threads=args.inference_threads,
        generation_timeout=args.generation_timeout,
        storage_quota=args.storage_quota,
        max_files=args.max_files,
        min_free_disk=args.min_free_disk,
        keep_failed_runs=args.keep_failed_runs,
        inference_queue_timeout=args.inference_queue_timeout,
        max_loaded_models=args.max_loaded_models,
        pools=pools,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Upload checks, exports and tokenizers run Python in worker threads; the event loop, which
    # answers every request, asks for the GIL often. Python hands it over every 5 ms by default:
    # a shorter interval keeps a management request's many hand-overs from adding up to seconds.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    app = create_app(settings)
    print(f"tunesmith serve: http://{args.host}:{args.port}/v1 (state in {settings.home})", file=sys.stderr)
    # On SIGTERM uvicorn waits for open connections; a client that never reads must not hold the
    # shutdown, so after the grace period they are closed (generations stop at their next token).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return 0


def _duration(text: str) -> float:
    from tunesmith.serve.storage import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _storage_options(serve) -> None:
    serve.add_argument(
        "--storage-quota",
        type=int,
        default=None,
        metavar="BYTES",
        help="Bytes of files one organisation may store; an upload past it is refused (413) as it arrives.",
    )
    serve.add_argument(
        "--max-files", type=int, default=None, help="Files one organisation may store (429 for one more)."
    )
    serve.add_argument(
        "--min-free-disk",
        type=int,
        default=0,
        metavar="BYTES",
        help="Free bytes the home's disk must keep: below it new uploads and jobs are refused (507).",
    )
    serve.add_argument(
        "--keep-failed-runs",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="Delete failed and cancelled runs and cached GGUF exports older than this (7d, 12h) at start; "
        "default: keep them (`tunesmith serve gc` frees them on demand).",
    )


def _gc(args: argparse.Namespace) -> int:
    from tunesmith.serve.storage import collect_garbage
    from tunesmith.serve.store import Store

    removed = collect_garbage(Store(Path(args.home or default_home())), args.keep_failed_runs)
    for path, size in removed:
        print(f"removed {path} ({size} bytes)")
    print(f"freed {sum(size for _, size in removed)} bytes in {len(removed)} paths")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from tunesmith.serve.store import Store

    for row in Store(Path(args.home or default_home())).list_keys():
        print(f"{row['key_hash'][:16]}  {row['org']}  created {row['created_at']}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from tunesmith.serve.store import Store

    removed = Store(Path(args.home or default_home())).revoke_key(args.key)
    if len(removed) != 1:
        why = "no key matches" if not removed else f"{len(removed)} keys match; give more of the hash"
        print(f"error: {why} {args.key!r}", file=sys.stderr)
        return 2
    print(f"revoked {removed[0][:16]}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from tunesmith.serve.store import Store

    if not args.org.strip():
        print("error: --org must not be empty", file=sys.stderr)
        return 2
    key = Store(Path(args.home or default_home())).create_key(args.org.strip())
    print(key)
    return 0


def _dest(kind: str, limit: str) -> str:
    return f"{kind.replace('-', '_')}_{limit}"


def _add_pool_options(serve) -> None:
    from tunesmith.serve.settings import DEFAULT_POOLS

    for kind, default in DEFAULT_POOLS.items():
        serve.add_argument(
            f"--{kind}-threads",
            dest=_dest(kind, "threads"),
            type=int,
            default=default.threads,
            help=f"Threads of their own that run {default.help} (default {default.threads}).",
        )
        serve.add_argument(
            f"--{kind}-per-org",
            dest=_dest(kind, "per_org"),
            type=int,
            default=default.per_org,
            help=f"{default.help[0].upper()}{default.help[1:]} one organisation may have running or waiting "
            f"(default {default.per_org}); over it 429 with Retry-After. The next free thread goes to the "
            "organisation served least recently.",
        )


def add_serve_commands(subparsers) -> None:
    """Register ``serve`` and ``keys create`` on the main CLI's subparsers (handler in ``func``)."""
    serve = subparsers.add_parser("serve", help="Run the OpenAI-compatible fine-tuning and inference API.")
    serve.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    serve.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    serve.add_argument(
        "--home", default=None, help="State folder (database, files, runs); default $TUNESMITH_HOME/serve."
    )
    serve.add_argument(
        "--max-running",
        type=int,
        default=1,
        help="Training jobs run at the same time; a free slot goes to the organisation whose last job "
        "started longest ago (round-robin), then to its oldest queued job.",
    )
    serve.add_argument("--max-upload-mb", type=float, default=512, help="Largest accepted upload, in MB.")
    serve.add_argument(
        "--procs-per-job", type=int, default=1, help="Processes that train each job (one per GPU; torch.distributed)."
    )
    serve.add_argument(
        "--max-adapters",
        type=int,
        default=4,
        help="Fine-tuned models kept in memory: LoRA adapters per decoder base, and fine-tuned encoders.",
    )
    serve.add_argument(
        "--max-body-kb", type=float, default=4096, help="Largest JSON request body, in KiB (413 over it)."
    )
    serve.add_argument(
        "--max-jobs-per-org",
        type=int,
        default=20,
        help="Unfinished (validating, queued, running or paused) fine-tuning jobs one organisation may have "
        "(429 over it).",
    )
    serve.add_argument(
        "--max-job-steps",
        type=int,
        default=None,
        help="Optimizer steps one job may train; a job whose data and hyperparameters need more fails at "
        "validation (default: no limit).",
    )
    serve.add_argument(
        "--max-job-minutes",
        type=float,
        default=None,
        help="Training wall time of one job, all its runs together; past it the trainer is stopped and the "
        "job fails with code job_time_limit (default: no limit).",
    )
    serve.add_argument(
        "--max-inference-per-org",
        type=int,
        default=4,
        help="Inference requests one organisation may have running or waiting (429 with Retry-After over it).",
    )
    serve.add_argument(
        "--inference-threads",
        type=int,
        default=2,
        help="Threads that load models and generate; management routes never wait for them. The next free "
        "thread goes to the organisation served least recently.",
    )
    serve.add_argument(
        "--inference-queue-timeout",
        type=float,
        default=30,
        help="Seconds an inference request may wait for a thread and for its model; then 503 with Retry-After.",
    )
    serve.add_argument(
        "--generation-timeout",
        type=float,
        default=120,
        help="Seconds one generation may compute, counted from its start (not from queueing); then it ends "
        "with finish_reason 'length'.",
    )
    serve.add_argument(
        "--max-loaded-models",
        type=int,
        default=1,
        help="Base models kept loaded for inference; past it the least recently used is dropped.",
    )
    _add_pool_options(serve)
    serve.add_argument(
        "--train-override",
        action="append",
        metavar="KEY=VALUE",
        help="Dotted config override applied to every job, e.g. train.save_every=10 (repeatable).",
    )
    serve.add_argument(
        "--trainer-command",
        default=None,
        help="Command that trains (CONFIG and --overwrite/--resume are appended); default: python -m tunesmith train.",
    )
    _storage_options(serve)
    serve.add_argument("--log-level", default="warning", help="uvicorn log level.")
    serve.set_defaults(func=_serve)
    gc = serve.add_subparsers(dest="serve_command").add_parser(
        "gc", help="Free what retention allows: failed and cancelled runs, cached GGUF exports (then exit)."
    )
    gc.add_argument("--home", default=None, help="State folder of the service; default $TUNESMITH_HOME/serve.")
    gc.add_argument(
        "--keep-failed-runs",
        type=_duration,
        default=7 * 86400.0,
        metavar="DURATION",
        help="Keep them this long (7d, 12h, 30m; default 7d).",
    )
    gc.set_defaults(func=_gc)

    keys = subparsers.add_parser("keys", help="Manage API keys of the service.")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="Create an API key for an organisation and print it.")
    create.add_argument("--org", required=True, help="Organisation name (created if new).")
    create.add_argument("--home", default=None, help="State folder of the service; default $TUNESMITH_HOME/serve.")
    create.set_defaults(func=_keys_create)
    listing = key_commands.add_parser("list", help="List API keys (sha256 prefix, organisation, creation time).")
    listing.add_argument("--home", default=None, help="State folder of the service; default $TUNESMITH_HOME/serve.")
    listing.set_defaults(func=_keys_list)
    revoke = key_commands.add_parser("revoke", help="Revoke an API key: the key itself or 8+ characters of its hash.")
    revoke.add_argument("key", help="The key, or a prefix of its sha256 as `keys list` shows it.")
    revoke.add_argument("--home", default=None, help="State folder of the service; default $TUNESMITH_HOME/serve.")
    revoke.set_defaults(func=_keys_revoke)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_serve_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
