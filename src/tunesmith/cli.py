"""`tunesmith` command line: thin fronts over the library functions.

Usage and input errors (argparse's, TunesmithError) print one line and exit 2; `validate` exits 1 when the
data has errors; Ctrl-C exits 130 (EPILOG lists them in --help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunesmith.errors import TunesmithError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

EPILOG = """exit codes:
  0    success
  1    validate: the data has errors (the report lists them)
  2    usage or input error (bad flag, config key, value or file): one line on stderr
  130  interrupted (Ctrl-C)"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line like every other error (the usage is in --help)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"tunesmith: error: {message} (see `{self.prog} --help`)\n")


def _train(args) -> int:
    import contextlib
    from pathlib import Path

    from tunesmith import library
    from tunesmith.config import load_config
    from tunesmith.evaluate.run import format_summary
    from tunesmith.runfolder import locked

    cfg = load_config(args.config, args.overrides)
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise TunesmithError("--nproc-per-node and --nnodes must be at least 1")
    if args.nproc_per_node > 1 or args.nnodes > 1:
        # Node 0 alone holds the folder (its rank 0 writes it): other nodes may share its file system.
        with locked(Path(cfg.out_dir)) if args.node_rank == 0 else contextlib.nullcontext():
            return _launch_train(args, cfg)
    summary = library.train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # a process of a distributed run: rank 0 reports
    _print_train_summary(summary)
    if cfg.data.test:
        # The question that matters: does the fine-tune beat the base model prompted well?
        print(format_summary(library.evaluate(cfg)))
    return 0


def _launch_train(args, cfg) -> int:
    """This node's processes, each running `tunesmith train` (what `torchrun -m tunesmith train` does)."""
    from tunesmith.library import check_launch
    from tunesmith.train.distributed import launch

    if "TORCHELASTIC_RUN_ID" in os.environ:
        raise TunesmithError("--nproc-per-node inside a process that torchrun started: give it to one of them")
    check_launch(cfg, args.resume, args.overwrite)  # once, before any process starts
    worker = ["train", args.config, *args.overrides]
    worker += ["--resume"] if args.resume else ["--overwrite"] if args.overwrite else []
    return launch(worker, args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_timeout)


def _print_train_summary(summary) -> None:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    before = f"{summary.initial_val_loss:.4f}" if summary.initial_val_loss is not None else "-"
    after = f"{summary.best_val_loss:.4f}" if summary.best_val_loss is not None else "-"
    console.print(
        Text(
            f"\nvalidation loss: {before} before -> {after} after (best at step {summary.best_step}); "
            f"{summary.steps} steps, {summary.trained_tokens:,} tokens, {summary.wall_seconds:.0f} s"
        )
    )
    samples_path = Path(summary.out_dir) / "samples.json"
    samples = json.loads(samples_path.read_text()) if samples_path.exists() else []
    if samples:
        table = Table(title="held-out inputs: base model vs fine-tuned", show_lines=True)
        for column in ("input", "base model", "fine-tuned", "reference"):
            table.add_column(column, overflow="fold")
        for s in samples:
            # Text(), not markup: E2E inputs are full of [brackets] that rich would eat.
            table.add_row(*(Text(s.get(k, "")) for k in ("input", "base", "finetuned", "reference")))
        console.print(table)
    console.print(f"outputs in {summary.out_dir}: adapter/ merged/ metrics.jsonl loss.png config.yaml")


def _eval(args) -> int:
    from tunesmith import library
    from tunesmith.config import load_config
    from tunesmith.evaluate.run import format_summary

    cfg = load_config(args.config, args.overrides)
    result = library.evaluate(cfg, args.finetuned, args.out or cfg.out_dir)
    print(format_summary(result))
    return 0


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        return dict(pair.split("=", 1) for pair in text.split(","))
    except ValueError:
        raise TunesmithError(f"--columns {text!r} must look like prompt=mr,completion=ref") from None


def _validate(args) -> int:
    from tunesmith.config import DataConfig, TrainConfig, from_flags
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models.vocabulary import load_tokenizer_for

    cfg = from_flags(
        DataConfig,
        {"train": "DATA"},
        train=args.data,
        validation=args.validation,
        val_fraction=0.0,
        format=args.format,
        columns=_columns(args.columns),
        max_seq_len=args.max_seq_len,
        overlength=args.overlength,
        system=args.system,
    )
    steps = from_flags(TrainConfig, {}, batch_size=args.batch_size, grad_accum=args.grad_accum)
    prepared = prepare_data(
        cfg, load_tokenizer_for(args.model, cfg), batch_size=steps.batch_size, grad_accum=steps.grad_accum, strict=False
    )
    print(prepared.render())
    return 0 if prepared.ok else 1


def _generate(args) -> int:
    from tunesmith.config import EvalConfig, from_flags
    from tunesmith.data.formats import Message
    from tunesmith.data.tokenize import encode_chat
    from tunesmith.generation import generate
    from tunesmith.models import load_model

    sampling = from_flags(
        EvalConfig, {}, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p
    )
    loaded = load_model(args.model)
    messages = ([Message("system", args.system)] if args.system else []) + [Message("user", args.prompt)]
    if args.tools:
        return _generate_with_tools(args, loaded, messages)
    out = generate(
        loaded.model,
        loaded.tokenizer,
        [encode_chat(loaded.tokenizer, messages)],
        max_new_tokens=sampling.max_new_tokens,
        batch_size=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
    )
    print(out.texts[0].strip())
    return 0


def _generate_with_tools(args, loaded, messages) -> int:
    """Offer the tools of args.tools; print the answer's text, then each call as OpenAI's tool_calls item."""
    from tunesmith.chat.render import render_prompt
    from tunesmith.chat.tools import parse_tool_calls
    from tunesmith.constrained import compile_grammar, tool_choice_grammar
    from tunesmith.data.formats import read_tools
    from tunesmith.generation import generate

    problems: list = []
    raw = json.loads(Path(args.tools).read_text(encoding="utf-8"))
    tools, _ = read_tools(raw if isinstance(raw, dict) else {"tools": raw}, problems)
    if problems:
        raise TunesmithError(f"{args.tools}: {problems[0][0]}: {problems[0][1]}")
    offered = () if args.tool_choice == "none" else tools
    grammar = tool_choice_grammar(offered, args.tool_choice)
    tokenizer = loaded.tokenizer
    out = generate(
        loaded.model,
        tokenizer,
        [tokenizer(render_prompt(tokenizer, messages, offered), add_special_tokens=False).input_ids],
        max_new_tokens=args.max_new_tokens,
        batch_size=1,
        temperature=args.temperature,
        top_p=args.top_p,
        grammars=None if grammar is None else [compile_grammar(tokenizer, loaded.model.config.vocab_size, grammar)],
    )
    content, calls = parse_tool_calls(out.texts[0]) if offered else (out.texts[0], [])
    if content.strip():
        print(content.strip())
    for call in calls:
        print(json.dumps(call.openai(), ensure_ascii=False))
    return 0


def _export(args) -> int:
    from tunesmith.export import export_run

    path = export_run(args.run_dir, args.to, args.outtype, args.out)
    print(path)
    return 0


def _interpolate(args) -> int:
    from tunesmith.config import load_config
    from tunesmith.tune.interpolate import interpolate, interpolation_curve, parse_alphas

    if (args.alpha is None) == (args.alphas is None):
        raise TunesmithError("give --alpha A (one model) or --alphas A,B,... with --eval CONFIG (the curve)")
    if args.alpha is not None:
        if args.overrides:
            raise TunesmithError(f"overrides ({' '.join(args.overrides)}) apply to the --eval config of --alphas")
        print(interpolate(args.run_dir, args.alpha, args.out))
        return 0
    alphas = parse_alphas(args.alphas)
    if not args.eval:
        raise TunesmithError("--alphas needs --eval CONFIG: the config whose test data scores each alpha")
    curve = interpolation_curve(args.run_dir, alphas, load_config(args.eval, args.overrides), args.out)
    print(Path(curve["folder"]) / "curve.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = _Parser(
        prog="tunesmith",
        description="Fine-tune pre-trained language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('tunesmith')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model from a YAML config")
    p.add_argument("config", help="YAML run config (see docs/configuration.md)")
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. train.lr=1e-4")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    mode.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir")
    p.add_argument(
        "--nproc-per-node", type=int, default=1, help="processes on this machine (one per GPU; 1: no process group)"
    )
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0 to nnodes - 1")
    p.add_argument("--rdzv-endpoint", help="HOST:PORT on machine 0 where the machines meet (several machines)")
    p.add_argument(
        "--rdzv-timeout",
        type=float,
        default=60.0,
        help="seconds the machines wait for each other at the start (default %(default)s)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("validate", help="check a data file before any compute (exit 1 if it has errors)")
    p.add_argument("data", help="training data file, glob or folder (JSONL, JSON, CSV, .txt, Parquet)")
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="whose tokenizer and chat template count the tokens"
    )
    p.add_argument("--validation", help="validation file, checked the same way")
    p.add_argument("--format", default="auto", help="data format (default: auto-detected); see data.format")
    p.add_argument("--columns", help="CSV column mapping, e.g. prompt=mr,completion=ref")
    p.add_argument("--system", help="system prompt added to every example that has none")
    p.add_argument("--max-seq-len", type=int, default=512, help="tokens per example (default %(default)s)")
    p.add_argument(
        "--overlength",
        choices=("error", "drop", "truncate_prompt"),
        default="error",
        help="examples longer than --max-seq-len: an error (default), dropped, or the prompt's start cut",
    )
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch, for steps per epoch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step, for steps per epoch")
    p.set_defaults(func=_validate)

    p = sub.add_parser("generate", help="answer one prompt with a base or fine-tuned model")
    p.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, HF folder or run out_dir")
    p.add_argument("--prompt", required=True, help="the user message to answer")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation length limit (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 (default): greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, with temperature > 0")
    p.add_argument("--tools", help="JSON file: OpenAI tools (an array, or an object with `tools`); calls print as JSON")
    p.add_argument(
        "--tool-choice",
        default="auto",
        help="auto (default), none, required (always call a tool), or a function name; "
        "required and a name constrain the answer to a call whose arguments validate",
    )
    p.set_defaults(func=_generate)

    p = sub.add_parser("eval", help="base zero-shot and few-shot vs the fine-tuned model on held-out data")
    p.add_argument("config", help="YAML run config (its data.test is evaluated)")
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. eval.max_items=100")
    p.add_argument("--finetuned", help="run folder of the fine-tune (default: the config's out_dir)")
    p.add_argument("--out", help="where report.html/report.md/eval.json go (default: the config's out_dir)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="a run's model as GGUF (llama.cpp, LM Studio), for Ollama, or its LoRA as GGUF")
    p.add_argument("run_dir", help="run folder of a finished `tunesmith train`")
    p.add_argument("--to", default="gguf", help="gguf (default), ollama (GGUF + Modelfile) or gguf-lora")
    p.add_argument("--outtype", default="f16", help="f32, f16 (default), bf16 or q8_0; gguf-lora: f32, f16, bf16")
    p.add_argument("--out", help="file (gguf, gguf-lora) or folder (ollama); default: inside RUN_DIR")
    p.set_defaults(func=_export)

    p = sub.add_parser("interpolate", help="WiSE-FT: a model between the base and a run's fine-tune, or the curve")
    p.add_argument("run_dir", help="run folder of a finished `tunesmith train`")
    p.add_argument("--alpha", type=float, help="0 = the base, 1 = the fine-tune: writes one model folder")
    p.add_argument("--alphas", help="comma-separated alphas, e.g. 0,0.25,0.5,0.75,1: the curve (needs --eval)")
    p.add_argument("--eval", help="YAML config whose test data and eval settings score each alpha")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="overrides of the --eval config, e.g. data.test=data/trec/validation.jsonl: choose alpha on validation",
    )
    p.add_argument("--out", help="model folder (--alpha) or curve folder (--alphas); default RUN_DIR/interpolated")
    p.set_defaults(func=_interpolate)

    from tunesmith.graders.cli import add_grader_commands
    from tunesmith.serve.cli import add_serve_commands
    from tunesmith.tune.cli import add_tune_command

    add_serve_commands(sub)
    add_grader_commands(sub)
    add_tune_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after an option (`train cfg.yaml --overwrite a.b=1`):
    # overrides that land after a flag arrive here as leftovers.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except TunesmithError as error:
        # In a distributed run every process may say it: each says which it is.
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"tunesmith: error: {rank}{error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    sys.exit(main())
