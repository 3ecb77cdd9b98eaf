"""tunesmith vs TRL's SFTTrainer: the same data, model, LoRA, lengths, batch and optimizer steps.

    python benchmarks/train_throughput.py              # every configuration, --steps 30, 1 repeat
    python benchmarks/train_throughput.py --quick      # 3-step smoke test of the whole harness
    python benchmarks/train_throughput.py --repeats 3 --only tunesmith-lora trl-lora-defaults
    python benchmarks/train_throughput.py --dtype float32  # both trainers in float32: any CPU can run it
    python benchmarks/train_throughput.py --model gemma3-270m --chat-template chatml  # a base model, ChatML added

Each configuration runs in its own process (a fresh interpreter: no warm caches, its own peak RSS)
and prints one JSON line. Throughput is non-padding tokens over the wall-clock time from the end
of warm-up step W to the end of the last step (W = --warmup, default 3), both trainers timed at the
same point (the end of each optimizer step). With --repeats R the table shows the median of R runs;
the repeats go round the configurations (A B A B ...), so the machine's drift hits each alike.
The validation loss of every run is computed by one function (tunesmith's SFT validation pass,
train/objective.py, float32, mean cross-entropy over completion tokens + end-of-turn) on the final
weights. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import cpu_flags, cpu_model, run_worker

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data/e2e_nlg/train.jsonl"
VALIDATION = REPO / "data/e2e_nlg/validation.jsonl"
RESULTS = REPO / "benchmarks/results/train_throughput.md"

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # all linear layers, as in configs/e2e_lora.yaml
LR = {"lora": 1e-3, "full": 5e-5}


@dataclass(frozen=True)
class Run:
    name: str
    trainer: str  # tunesmith | trl
    method: str  # lora | full
    options: dict = field(default_factory=dict)
    what: str = ""
    by_default: bool = True  # False: only with --only


RUNS = [
    Run("tunesmith-lora", "tunesmith", "lora", {}, "tunesmith defaults: one packed row per micro-batch"),
    Run(
        "tunesmith-lora-grouped",
        "tunesmith",
        "lora",
        {"packing": False, "group_by_length": True},
        "tunesmith padded, length-grouped batches (higher val loss early)",
    ),
    Run(
        "tunesmith-lora-lean",
        "tunesmith",
        "lora",
        {"gradient_checkpointing": True},
        "tunesmith defaults + train.gradient_checkpointing=true (memory-lean, like TRL's default)",
    ),
    Run(
        "tunesmith-lora-plain",
        "tunesmith",
        "lora",
        {"fast_paths": False},
        "tunesmith with train.fast_paths=false: plain PEFT / transformers, padded batches (the control)",
    ),
    Run("trl-lora-defaults", "trl", "lora", {}, "SFTTrainer defaults (grad. checkpointing on)"),
    Run(
        "trl-lora-bf16",
        "trl",
        "lora",
        {"bf16": True},
        "SFTTrainer defaults with bf16=True even where the CPU has no avx512_bf16/AMX (bf16 emulated)",
        by_default=False,
    ),
    Run(
        "trl-lora-padding-free",
        "trl",
        "lora",
        # TRL refuses padding_free without packing unless max_length is None; E2E examples are
        # all far shorter than 256 tokens, so nothing is truncated either way.
        {"padding_free": True, "max_length": None, "gradient_checkpointing": False, "completion_only_loss": True},
        "SFTTrainer padding_free, no checkpointing, completion-only",
    ),
    Run(
        "trl-lora-packed",
        "trl",
        "lora",
        {"packing": True, "gradient_checkpointing": False, "completion_only_loss": True},
        "SFTTrainer packing (bfd, padding-free), no checkpointing, completion-only",
    ),
    Run(
        "trl-lora-no-checkpointing",
        "trl",
        "lora",
        {"gradient_checkpointing": False, "completion_only_loss": True},
        "SFTTrainer padded, no checkpointing, completion-only",
    ),
    Run("tunesmith-full", "tunesmith", "full", {}, "tunesmith full fine-tuning, defaults"),
    Run(
        "tunesmith-full-bf16-moments",
        "tunesmith",
        "full",
        {"optimizer_state_dtype": "bfloat16"},
        "tunesmith full fine-tuning, AdamW moments stored in bfloat16",
    ),
    Run("trl-full-defaults", "trl", "full", {}, "SFTTrainer full fine-tuning, defaults"),
    Run(
        "trl-full-no-checkpointing",
        "trl",
        "full",
        {"gradient_checkpointing": False, "completion_only_loss": True},
        "SFTTrainer full, no checkpointing, completion-only",
    ),
]


# ---------------------------------------------------------------- worker side (one process per run)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def clock_recipe_steps(device) -> list[float]:
    """The end time of every optimizer step tunesmith's recipe takes from now on in this process
    (where TRL's on_step_end fires), filled in as it trains."""
    from tunesmith.train import recipe

    step_ends: list[float] = []

    class TimedProgress(recipe.TrainProgress):
        def advance(self, step, *rest, **kw):
            _sync(device)
            step_ends.append(time.perf_counter())
            super().advance(step, *rest, **kw)

    recipe.TrainProgress = TimedProgress
    return step_ends


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _eval_config(args):
    from tunesmith.config import config_from_dict

    data = {"train": str(TRAIN), "validation": str(VALIDATION), "max_seq_len": args.max_len}
    return config_from_dict(
        {
            "model": args.model,
            # Padded batches: any model's attention runs them, TRL's included.
            "data": {**data, "packing": False, "chat_template": args.chat_template},
            "train": {"batch_size": 8, "dtype": "float32"},
        }
    )


def _tokenizer(args):
    """The model's tokenizer with --chat-template applied, as tunesmith trains with it."""
    from tunesmith.models.vocabulary import load_tokenizer_for

    return load_tokenizer_for(args.model, _eval_config(args).data)


def validation_loss(model, tokenizer, args) -> float:
    """The one definition used for every run: float32, mean CE over the completion tokens (and the
    end-of-turn token closing them) of the validation file, tokenized with the chat template."""
    from tunesmith.data.formats import read_examples
    from tunesmith.data.tokenize import tokenize_examples
    from tunesmith.data.views import Listed
    from tunesmith.train.objective import SFTObjective, evaluate_model

    examples = Listed(tokenize_examples(tokenizer, read_examples(VALIDATION).examples, args.max_len))
    cfg = _eval_config(args)
    objective = SFTObjective(cfg, tokenizer.pad_token_id, _device())
    return evaluate_model(model, objective, examples, cfg)["val_loss"]


def _throughput(step_ends: list[float], step_tokens: list[int], warmup: int) -> tuple[float, int, float]:
    """Tokens/s from the end of step `warmup` to the end of the last step (at least one step is
    always left out: its end is where the clock starts)."""
    w = min(max(warmup, 1), len(step_ends) - 1)
    tokens = sum(step_tokens[w:])
    seconds = step_ends[-1] - step_ends[w - 1]
    return tokens / max(seconds, 1e-9), tokens, seconds


def run_tunesmith(run: Run, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.config import config_from_dict
    from tunesmith.train import recipe

    device = _device()
    step_ends = clock_recipe_steps(device)
    out = Path(tempfile.mkdtemp(prefix="bench-tunesmith-"))
    train = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "lr": LR[run.method],
        "warmup_steps": min(3, args.steps),
        "log_every": 1,  # tokens of every step, for the warm-up cut
        "eval_every": 10 * args.steps,  # only the initial and the final evaluation
        "save_every": 10 * args.steps,
        "seed": 0,
        "dtype": args.dtype,
        **{
            k: run.options[k]
            for k in ("gradient_checkpointing", "fast_paths", "optimizer_state_dtype")
            if k in run.options
        },
    }
    cfg = config_from_dict(
        {
            "model": args.model,
            "data": {
                "train": str(TRAIN),
                "validation": str(VALIDATION),
                "max_seq_len": args.max_len,
                "chat_template": args.chat_template,
                **{k: run.options[k] for k in ("packing", "group_by_length") if k in run.options},
            },
            "method": {"name": run.method, **(LORA if run.method == "lora" else {})},
            "train": train,
            "eval": {"samples": 0},
            "out_dir": str(out),
        }
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = recipe.train(cfg, overwrite=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "trained_tokens" in m]
    cumulative = [m["trained_tokens"] for m in steps]
    step_tokens = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
    rate, tokens, seconds = _throughput(step_ends, step_tokens, args.warmup)
    # MFU as the trainer counts it (a prompt prefix shared by a packed micro-batch's examples runs
    # once and counts once), over the timed steps: each step's weighted by its seconds.
    timed = min(max(args.warmup, 1), len(steps) - 1)
    step_seconds = [t / m["tokens_per_second"] for t, m in zip(step_tokens[timed:], steps[timed:], strict=True)]
    result = {
        "mfu": sum(m["mfu"] * s for m, s in zip(steps[timed:], step_seconds, strict=True)) / sum(step_seconds),
        "tokens_per_second": rate,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        # Peak RSS at the last step, before the final evaluation and the export.
        "peak_rss_mb": steps[-1]["peak_rss_mb"],
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "train_loss_last": steps[-1]["train_loss"],
        "best_step": summary.best_step,
    }
    tokenizer = _tokenizer(args)
    # The exported model: the best checkpoint, which with only the initial and the final
    # evaluation is the final weights unless training made the model worse than the base.
    model = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).to(device)
    result["val_loss"] = validation_loss(model, tokenizer, args)
    return result


def _trl_dataset(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Conversational prompt/completion: TRL renders it with the same chat template as tunesmith
    # and (completion-only loss) trains the assistant turn.
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in rows
        ]
    )


def run_trl(run: Run, args) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models import load_tokenizer, resolve_model_path
    from tunesmith.models.vocabulary import extend_tokenizer, grow_embeddings
    from tunesmith.precision import bf16_supported

    device = _device()
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(args.model, require_template=args.chat_template == "model")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # --chat-template's tokens get the rows tunesmith gives them (mean-initialised). They stay frozen here:
    # TRL 1.16's fused LM head reads lm_head.weight and .bias directly, which PEFT's trainable token rows
    # on a tied head do not have (AttributeError), so TRL cannot train them as tunesmith does.
    rows = len(tokenizer)
    added = extend_tokenizer(tokenizer, _eval_config(args).data)
    grow_embeddings(model, added, rows)
    dataset = _trl_dataset(TRAIN)
    options = dict(run.options)
    batch_size = args.batch_size
    if options.get("packing"):
        # A packed batch counts rows of max_length tokens: size it to hold about batch_size
        # examples, so each optimizer step sees as many examples as the other runs.
        mean_len = args.mean_example_tokens
        batch_size = max(1, round(args.batch_size * mean_len / args.max_len))
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        max_steps=args.steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=LR[run.method],
        lr_scheduler_type="cosine",
        warmup_steps=min(3, args.steps),
        max_grad_norm=1.0,
        weight_decay=0.0,
        use_cpu=device.type == "cpu",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=args.steps,
        disable_tqdm=True,
        seed=0,
        **{"max_length": args.max_len, "bf16": args.dtype == "auto" and bf16_supported(device), **options},
    )
    peft_config = None
    if run.method == "lora":
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
        )

    step_tokens: list[int] = []
    step_ends: list[float] = []
    pending = [0]

    class CountingTrainer(SFTTrainer):
        # Non-padding tokens of each micro-batch, as the model receives it.
        def training_step(self, model, inputs, *rest, **kw):
            mask = inputs.get("attention_mask")
            pending[0] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *rest, **kw)

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            _sync(device)
            step_ends.append(time.perf_counter())
            step_tokens.append(pending[0])
            pending[0] = 0

    trainer = CountingTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[StepClock()],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    rate, tokens, seconds = _throughput(step_ends, step_tokens, args.warmup)
    result = {
        "tokens_per_second": rate,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "per_device_train_batch_size": batch_size,
    }
    trained = trainer.model
    if trained.is_gradient_checkpointing:
        trained.gradient_checkpointing_disable()
    result["val_loss"] = validation_loss(trained, tokenizer, args)
    return result


def worker(run: Run, args) -> None:
    result = (run_tunesmith if run.trainer == "tunesmith" else run_trl)(run, args)
    print(json.dumps({"name": run.name, **result}), flush=True)


# ---------------------------------------------------------------- parent side


def data_shape(args) -> dict:
    """Token statistics of the training file, as tunesmith tokenizes it (the same for every run)."""
    from tunesmith.data.formats import read_examples
    from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_examples
    from tunesmith.train.flops import mean_attended_keys

    examples = tokenize_examples(_tokenizer(args), read_examples(TRAIN).examples, args.max_len)
    lengths = [len(e.input_ids) for e in examples]
    labels = sum(sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in examples)
    return {
        "mean_example_tokens": sum(lengths) / len(lengths),
        "label_share": labels / sum(lengths),
        "attended_keys": mean_attended_keys(lengths),
    }


def model_flops(model: str, method: str, shape: dict) -> float:
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model
    from tunesmith.train.flops import flops_per_token

    base = load_model(model, require_template=False).model  # a chat template's few added rows: negligible
    if method == "lora":
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear")
        base = get_peft_model(base, lora)
    else:
        base.requires_grad_(True)
    flops = flops_per_token(base, shape["label_share"], shape["attended_keys"])
    del base
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return flops


def run_in_subprocess(run: Run, args, shape: dict) -> dict:
    worker_args = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--model",
        args.model,
        "--max-len",
        str(args.max_len),
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        args.dtype,
        "--mean-example-tokens",
        str(shape["mean_example_tokens"]),
        "--chat-template",
        args.chat_template,
    ]
    return run_worker(__file__, run.name, worker_args, REPO)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(results: dict[str, dict], args, shape: dict, peak: float, peak_dtype: str) -> str:
    import torch

    device = _device()
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_model()} (flags: {cpu_flags()})"
    precision = (
        "bf16 autocast where supported (tunesmith dtype auto, TRL bf16=True)"
        if args.dtype == "auto"
        else "float32 (tunesmith dtype float32, TRL bf16=False)"
    )
    template = (
        ""
        if args.chat_template == "model"
        else f" with the {args.chat_template} chat template (its added token rows train under tunesmith's LoRA; "
        "TRL 1.16 cannot train them on a tied head, so its val loss is not comparable)"
    )
    lines = [
        "# Training throughput: tunesmith vs TRL SFTTrainer",
        "",
        f"Command: `python benchmarks/train_throughput.py {' '.join(_measuring_args())}`".rstrip(),
        "",
        f"Machine: {machine}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; measured {peak_dtype} matmul peak {peak / 1e12:.3f} TFLOP/s.",
        f"Work: {args.model}{template}, E2E NLG train file, max length {args.max_len}, batch {args.batch_size} "
        f"examples x 1 micro-batch, {args.steps} optimizer steps, LoRA r={LORA['r']} alpha={LORA['alpha']} "
        f"dropout {LORA['dropout']} on all linear layers (lr {LR['lora']}) or full fine-tuning "
        f"(lr {LR['full']}); cosine schedule, 3 warm-up steps, grad-norm clip 1.0; {precision}; compute "
        f"dtype here: {peak_dtype}.",
        f"Timing: tokens/s over steps {args.warmup + 1}..{args.steps} (first {args.warmup} excluded), "
        f"median of {args.repeats} run(s) taken in turn, each in a fresh process. Mean example "
        f"{shape['mean_example_tokens']:.0f} tokens, {shape['label_share']:.0%} of them labelled.",
        "Tokens/s counts every example's tokens; MFU counts the FLOPs the model ran, so a prompt prefix "
        "that tunesmith's packing computes once for several examples counts once.",
        "Validation loss: float32 mean CE over completion tokens of data/e2e_nlg/validation.jsonl, by "
        "tunesmith's SFT validation pass (train/objective.py) on each run's final weights (one function for all runs).",
        "",
        "| run | what | example tokens/s (non-padding) | MFU (FLOPs computed) | peak RSS MB | peak CUDA MB "
        "| val loss | tokens/s vs tunesmith | RSS vs tunesmith |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in RUNS:
        r = results.get(run.name)
        if r is None:
            continue
        ours = results.get(f"tunesmith-{run.method}")
        cuda = f"{r['peak_cuda_mb']:.0f}" if r.get("peak_cuda_mb") else "-"
        lines.append(
            f"| {run.name} | {run.what} | {r['tokens_per_second']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_rss_mb']:.0f} | {cuda} | {r['val_loss']:.4f} | "
            f"{_ratio(r['tokens_per_second'], ours and ours['tokens_per_second'])} | "
            f"{_ratio(r['peak_rss_mb'], ours and ours['peak_rss_mb'])} |"
        )
    lines += ["", "Targets (tunesmith / TRL):", ""]
    # The float32 table has its own speed target (3x TRL defaults; 2.5x with bf16 autocast).
    speed_target = "2.5x" if args.dtype == "auto" else "3x"
    for run in RUNS:
        ours = results.get(run.name) if run.trainer == "tunesmith" else None
        defaults = results.get(f"trl-{run.method}-defaults")
        others = [results[r.name] for r in RUNS if r.trainer == "trl" and r.method == run.method and r.name in results]
        if not (ours and defaults and others):
            continue
        best = max(others, key=lambda r: r["tokens_per_second"])
        lines += [
            f"- {run.name}: tokens/s {_ratio(ours['tokens_per_second'], defaults['tokens_per_second'])} TRL "
            f"defaults (target >= {speed_target}), {_ratio(ours['tokens_per_second'], best['tokens_per_second'])} "
            f"TRL fastest ({best['name']}, target >= 1.5x); peak RSS "
            f"{_ratio(ours['peak_rss_mb'], defaults['peak_rss_mb'])} of TRL defaults, "
            f"{_ratio(ours['peak_rss_mb'], best['peak_rss_mb'])} of TRL fastest (target <= 0.6x); "
            f"val loss {ours['val_loss'] / defaults['val_loss'] - 1:+.1%} vs TRL defaults, "
            f"{ours['val_loss'] / best['val_loss'] - 1:+.1%} vs TRL fastest (target within 2%).",
        ]
    return "\n".join(lines) + "\n"


def _measuring_args() -> list[str]:
    """This command's arguments without `--render FILE`: a re-rendered table names the run that measured it."""
    args = sys.argv[1:]
    if "--render" in args:
        at = args.index("--render")
        del args[at : at + 2]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of tokens/s")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median shown)")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up: a smoke test")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="built-in name or HF folder")
    parser.add_argument(
        "--chat-template",
        default="model",
        help="data.chat_template of every run: model (its own; default), or chatml for a base model (gemma3-270m)",
    )
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32"],
        default="auto",
        help="auto: bf16 autocast where the hardware has it (TRL bf16=True); float32: both trainers in "
        "float32 (TRL bf16=False), the table any machine can produce",
    )
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument(
        "--out", type=Path, help=f"markdown table written here (default {RESULTS.name}, _float32 with --dtype float32)"
    )
    parser.add_argument("--render", type=Path, help="only rewrite the table from this results .json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mean-example-tokens", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if args.out is None:
        args.out = RESULTS if args.dtype == "auto" else RESULTS.with_stem(f"{RESULTS.stem}_float32")
    runs = {r.name: r for r in RUNS}
    if args.worker:
        worker(runs[args.worker], args)
        return

    import torch

    from tunesmith.precision import bf16_supported
    from tunesmith.train.flops import PeakFlops

    chosen = [runs[n] for n in args.only] if args.only else [r for r in RUNS if r.by_default]
    device = _device()
    dtype = torch.bfloat16 if args.dtype == "auto" and bf16_supported(device) else torch.float32
    peak = PeakFlops(device, dtype).value
    if args.render:
        saved = json.loads(args.render.read_text())
        args.out.write_text(render(saved["results"], args, saved["shape"], peak, str(dtype).removeprefix("torch.")))
        return
    shape = data_shape(args)
    flops = {m: model_flops(args.model, m, shape) for m in {r.method for r in chosen}}
    results: dict[str, dict] = {}
    runs_of: dict[str, list[dict]] = {run.name: [] for run in chosen}
    # Repeats go round the configurations, so a machine that speeds up or slows down over the
    # benchmark (shared CPUs drift by tens of percent over minutes) weighs on all of them alike.
    for i in range(args.repeats):
        for run in chosen:
            started = time.perf_counter()
            result = run_in_subprocess(run, args, shape)
            runs_of[run.name].append(result)
            print(
                f"{run.name} [{i + 1}/{args.repeats}]: {result['tokens_per_second']:.0f} tokens/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB, val loss {result['val_loss']:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    for run in chosen:
        repeats = runs_of[run.name]
        # The run with the median tokens/s (the lower one of an even count), with its own RSS and loss.
        median = sorted(repeats, key=lambda r: r["tokens_per_second"])[(len(repeats) - 1) // 2]
        if "mfu" not in median:  # TRL computes every token of every example
            median["mfu"] = median["tokens_per_second"] * flops[run.method] / peak
        median["tokens_per_second_all"] = [r["tokens_per_second"] for r in repeats]
        results[run.name] = median
    table = render(results, args, shape, peak, str(dtype).removeprefix("torch."))
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps({"shape": shape, "results": results}, indent=1))


if __name__ == "__main__":
    main()
