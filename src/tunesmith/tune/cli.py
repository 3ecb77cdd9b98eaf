"""``tunesmith tune``: the hyperparameter search on the command line (registered by add_tune_command)."""

from __future__ import annotations


def _tune(args) -> int:
    from tunesmith.tune.search import tune

    result = tune(args.config, args.overrides, args.trials, args.time_budget, args.jobs, args.out)
    print(f"{result.trials} trials in {result.out}; table: {result.table}")
    if result.best_config is None:
        print("no trial finished within the forgetting budget: no best.yaml")
        return 0
    print(f"best: trial {result.best}, config {result.best_config} (train it, then evaluate data.test once)")
    return 0


def add_tune_command(sub) -> None:
    p = sub.add_parser(
        "tune", help="search hyperparameters (Optuna TPE) on the validation split; writes the best config"
    )
    p.add_argument("config", help="YAML run config; its tune section sets the space, metric and budget")
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. tune.max_forgetting=0.05")
    p.add_argument(
        "--trials", type=int, help="trials the study should hold (default: tune.trials); more continue a study"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="MIN",
        help="minutes after which no new trial starts (running trials finish)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="J",
        help="trials run at once, each in its own process with cores/J torch threads (default %(default)s)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="study folder: study.db, trials/, tables, best.yaml (default: OUT_DIR-tune)"
    )
    p.set_defaults(func=_tune)
