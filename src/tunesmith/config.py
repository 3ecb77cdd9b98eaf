"""The one typed run configuration: YAML file + dotted overrides (``train.lr=1e-4``).

Every field has a description: `python -m tunesmith.config --markdown` makes docs/configuration.md from them
(tunesmith.config_docs). Unknown keys and wrong types are errors that name the key, the override or file that
set it, and suggest the nearest valid one (tunesmith.config_names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunesmith.config_names import did_you_mean
from tunesmith.errors import TunesmithError

PREFERENCE_FORMATS = ("openai_dpo", "chosen_rejected")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReplayConfig(_Strict):
    path: str = Field(description="General text (the `text` format: .txt, or JSONL with a `text` field) to replay.")
    fraction: float = Field(
        gt=0.0,
        lt=1.0,
        description="Share of the mixed training examples that are replayed general-text blocks (seeded, "
        "every token a label); against forgetting.",
    )


class DataConfig(_Strict):
    train: str = Field(
        description="Training data: a JSONL, JSON, CSV, .txt or Parquet file, a glob or folder of such shards, "
        "or a Hugging Face datasets folder written by save_to_disk."
    )
    validation: str | None = Field(None, description="Validation file; if absent, val_fraction is split off.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train held out for validation when no file is given."
    )
    test: str | None = Field(None, description="Held-out test file for `tunesmith eval` (and after train).")
    format: Literal[
        "auto", "messages", "sharegpt", "prompt_completion", "alpaca", "csv", "text", "openai_dpo", "chosen_rejected"
    ] = Field(
        "auto",
        description="Data format; `auto` detects it from the file and says which it chose "
        "(`openai_dpo` and `chosen_rejected` are preference pairs, for method.name=dpo).",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="CSV column mapping: which column is the prompt, the completion (and optionally the system "
        "prompt), e.g. {prompt: mr, completion: ref}; `tunesmith validate` takes --columns prompt=mr,completion=ref.",
    )
    system: str | None = Field(
        None, description="System prompt added to every example that has none (also used by eval)."
    )
    max_seq_len: int = Field(512, ge=8, description="Tokens per example (raw text: per packed block).")
    overlength: Literal["error", "drop", "truncate_prompt"] = Field(
        "error",
        description="Examples longer than max_seq_len: `error` (the message names the max_seq_len that fits "
        "them all), `drop` them (counted in the report), or `truncate_prompt` (cut the prompt's start, keep "
        "the answer).",
    )
    num_workers: int | None = Field(
        None,
        ge=1,
        description="Processes that validate and tokenize (once per data, then the token store is reused); "
        "default: one per core.",
    )
    cache_namespace: str | None = Field(
        None,
        description="Folded into the key of the cached token store: a store built under one namespace is never "
        "reused under another (the service sets each organisation's id, so one organisation's delete never removes "
        "a store another's job maps, and its validation speed tells nothing of the others' uploads).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch examples of similar length (sorted within windows of 64 batches): less padding for "
        "the padded layout, but less varied batches; measured on E2E: +4% validation loss after 20 steps.",
    )
    chat_template: str = Field(
        "model",
        description="How chats are rendered: `model` (the tokenizer's own template), `chatml` (built in: "
        "<|im_start|>role ... <|im_end|>, for base models without a template) or the path of a Jinja file. "
        "Tokens the template needs and the vocabulary lacks are added as special tokens (embedding rows "
        "initialised as the mean of the existing rows, trained under LoRA too).",
    )
    chat_template_tokens: list[str] | None = Field(
        None,
        description="The special tokens a Jinja chat_template file needs; default: its `<|...|>` literals.",
    )
    packing: bool = Field(
        True,
        description="Put a micro-batch's examples back to back in one row (positions restart, each example "
        "attends only to itself) instead of padding them: no compute on padding. E2E LoRA, 2 CPU cores: "
        "770 tokens/s against 571 for padded length-grouped batches, and lower validation loss.",
    )
    replay: ReplayConfig | None = Field(
        None,
        description="General text mixed into the training batches against forgetting: {path, fraction} "
        "(docs/training.md).",
    )


class MethodConfig(_Strict):
    name: Literal["lora", "full", "dpo", "grpo"] = Field(
        "lora",
        description="`lora` (PEFT adapter), `full` fine-tuning, `dpo` preference tuning on pairs, or `grpo` "
        "reinforcement fine-tuning: answers sampled and scored by a grader (section `rl`).",
    )
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input. 0 by default: above 0 PEFT keeps a dropped copy of every "
        "adapted layer's input, ~25% more activation memory (measured: 2.5 -> 3.4 GB peak on E2E).",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; `all-linear` = every linear layer but lm_head."
    )
    objective: Literal["sft", "mlm", "contrastive", "classification"] = Field(
        "sft",
        description="`sft`: a decoder LM on chat data; encoder objectives (tunesmith.encoders): `mlm` continued "
        "pre-training on raw text, `contrastive` (query, positive[, negative]) pairs, `classification` text/label.",
    )
    weights: Literal["lora", "full"] = Field(
        "lora",
        description="dpo and grpo: what is trained, a LoRA adapter (the reference is the same model with the "
        "adapter disabled) or all weights (dpo: reference log-probs computed once before training; grpo: a "
        "frozen copy of the base, one more model in memory when rl.beta > 0).",
    )
    beta: float = Field(
        0.1, gt=0, description="dpo only: strength of the pull towards the reference (higher = stay closer)."
    )
    sft_weight: float = Field(
        0.0, ge=0, description="dpo only: weight of an added NLL loss on the preferred answer (as RPO / OpenAI)."
    )

    @model_validator(mode="after")
    def _dpo_fields_need_dpo(self):
        # Values, not keys: a dumped config (run folder config.yaml) holds every field at its default.
        fields = type(self).model_fields
        given = [f for f in ("beta", "sft_weight") if getattr(self, f) != fields[f].default]
        if self.name != "dpo" and given:
            raise ValueError(f"method.{given[0]} only applies to method.name=dpo (got name={self.name})")
        if self.name not in ("dpo", "grpo") and self.weights != fields["weights"].default:
            raise ValueError(f"method.weights only applies to method.name=dpo or grpo (got name={self.name})")
        if self.name in ("dpo", "grpo") and self.objective != "sft":
            raise ValueError(f"method.name={self.name} tunes a decoder, not method.objective={self.objective}")
        return self

    @property
    def lora(self) -> bool:
        """Whether the trained weights are a LoRA adapter (plain LoRA, or DPO / GRPO on an adapter)."""
        return self.name == "lora" or (self.name in ("dpo", "grpo") and self.weights == "lora")


class EncoderConfig(_Strict):
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="`mlm`: share of tokens masked (BERT: 0.15).")
    whole_word_mask: bool = Field(
        False, description="`mlm`: mask all pieces of a word together (SciBERT/BioBERT's later recipes)."
    )
    temperature: float = Field(
        0.05, gt=0.0, description="`contrastive`: softmax temperature of the cosine scores (0.05 = scale 20)."
    )
    learnable_temperature: bool = Field(False, description="`contrastive`: train the temperature too (CLIP-style).")
    scoring: Literal["pooled", "maxsim"] = Field(
        "pooled",
        description="`contrastive`: how a query scores a document, in training and in retrieval evaluation. "
        "pooled: cosine of the pooled embeddings (the checkpoint's pooling). maxsim: late interaction "
        "(ColBERT): each query token's best cosine among the document's tokens, averaged over the query; "
        "evaluation then also scores the base encoder this way.",
    )
    hard_negatives: int = Field(
        0,
        ge=0,
        description="`contrastive`: add this many BM25-mined hard negatives per pair (pairs without one), searched "
        "for in a BEIR folder's whole corpus, or among the pairs' positives.",
    )
    dropout: float | None = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout of the encoder body while training (hidden and attention). 0 lets BERT models train "
        "on packed batches (encoders/model.py); null keeps the checkpoint's (BERT: 0.1).",
    )
    max_seq_len: int | None = Field(
        None,
        ge=8,
        description="Tokens the encoder reads per text, in training, in evaluation (the base encoder too) and in "
        "the export; longer texts are cut. null keeps the checkpoint's sentence-transformers max_seq_length "
        "(all-MiniLM-L6-v2: 256); at most its position embeddings (512).",
    )


class EarlyStoppingConfig(_Strict):
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest validation-loss drop that counts.")


class WandbConfig(_Strict):
    """Where report_to: [wandb] sends the run."""

    project: str = Field("tunesmith", min_length=1, description="The W&B project.")
    name: str | None = Field(None, description="The run's name (default: the out_dir folder's name).")
    entity: str | None = Field(None, description="The W&B team or user (default: the API key's).")
    tags: list[str] = Field([], description="Tags on the run.")


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: Annotated[float, Field(gt=0, le=1.0)] | Literal["auto"] = Field(
        2e-4,
        description="Peak learning rate, or `auto`: a short learning-rate range test on the training data picks it "
        "(decoder runs; docs/training.md).",
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _number_or_auto(cls, value):
        # One message naming the bound, not one per member of the union.
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PydanticCustomError("lr", "Input should be a number or 'auto'") from None
        if number <= 0:
            raise PydanticCustomError("lr", "Input should be greater than 0")
        if number > 1:
            raise PydanticCustomError("lr", "Input should be less than or equal to 1")
        return number

    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="AdamW (fused where the device allows), or SGD with momentum 0.9."
    )
    optimizer_state_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Storage of AdamW's two moments. bfloat16 halves the optimizer state; the update is still "
        "computed in float32 and the moments are written back with stochastic rounding, so small updates are "
        "not rounded away. Full fine-tuning of SmolLM2-135M on E2E, float32, 12 steps: peak RSS 3,862 -> "
        "3,585 MB, tokens/s 0.95x, the same validation loss (1.5496).",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="Decoupled weight decay (AdamW) / L2 (SGD).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay after warm-up.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps from 0 to lr.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global grad norm; null disables.")
    eval_every: int = Field(50, ge=1, description="Evaluate validation loss every N optimizer steps.")
    save_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps.")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when validation loss stops improving; null disables."
    )
    seed: int = Field(0, description="Seed for data order, LoRA init and dropout.")
    nan_policy: Literal["stop", "continue"] = Field(
        "stop",
        description="A NaN or infinite loss or gradient norm (seen at log and eval steps): stop the run with "
        "an error, or continue (its metrics line then holds null).",
    )
    log_every: int = Field(5, ge=1, description="Write a metrics line every N steps.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype (trained weights and optimizer stay float32; a LoRA run holds its frozen "
        "base in bfloat16 while training); auto = bfloat16 autocast where the CPU has avx512_bf16/AMX or the "
        "GPU supports it (~2.5x faster on such a CPU), else float32.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in backward. E2E LoRA, 2 CPU cores: "
        "peak RSS 1585 -> 1265 MB (-20%) for 24% fewer tokens/s.",
    )
    compile: bool = Field(False, description="torch.compile the model (slow first steps).")
    fast_paths: bool = Field(
        True,
        description="tunesmith's kernels (src/tunesmith/kernels/): packed rows, the label-only lm_head loss, "
        "fused LoRA, lean storage, the activation arena, added token rows beside their table. false runs the "
        "plain PEFT / transformers path (padded batches, logits at every position): the control for benchmarks "
        "and numerics.",
    )
    loss_chunk_size: int = Field(
        1024, ge=1, description="Label positions projected through lm_head at once (8,192 vocabulary rows at a time)."
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        [],
        description="Experiment trackers that also get every metrics line: TensorBoard event files in "
        "out_dir/tensorboard, MLflow (MLFLOW_TRACKING_URI, else a file store in out_dir/mlruns), Weights & "
        "Biases (train.wandb; WANDB_MODE=offline writes the run under out_dir/wandb). Optional extras: pip "
        "install 'tunesmith[tensorboard]' / 'tunesmith[mlflow]' / 'tunesmith[wandb]'.",
    )
    wandb: WandbConfig = Field(
        default_factory=lambda: WandbConfig(), description="The Weights & Biases run, for report_to: [wandb]."
    )

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        from tunesmith.trackers import require_trackers

        return require_trackers(list(dict.fromkeys(names)))


class RagConfig(_Strict):
    """eval.rag: retrieved passages in the prompt, as two more variants (docs/evaluation.md)."""

    corpus: str = Field(
        description="The passages to retrieve from: JSON Lines with `id` and `text` (and an optional `title`) per "
        "line, a BEIR folder, or a .txt file of blank-line separated passages (id: the line a passage starts on)."
    )
    retriever: str = Field(
        "bm25",
        min_length=1,
        description="`bm25` (Okapi on lower-cased words), `hybrid` (BM25 and rag.encoder fused by reciprocal "
        "rank), or an encoder that ranks by the cosine of pooled embeddings: a built-in name (`minilm-l6`), a "
        "sentence-transformers folder or an encoder run folder.",
    )
    encoder: str = Field("minilm-l6", min_length=1, description="`hybrid` only: the dense retriever fused with BM25.")
    k: int = Field(3, ge=1, description="Passages put in each prompt, best first.")

    @model_validator(mode="after")
    def _encoder_is_for_hybrid(self):
        if self.retriever != "hybrid" and self.encoder != type(self).model_fields["encoder"].default:
            raise ValueError(f"eval.rag.encoder only applies to retriever=hybrid (got retriever={self.retriever})")
        return self


EvalTask = Literal["generation", "qa", "classification", "text", "retrieval", "preference", "tool_calls", "graded"]
# The tasks whose test items are prompts answered by a decoder (evaluate/run.py): where eval.rag applies.
PROMPTED_TASKS = ("generation", "qa", "classification", "text")


class EvalConfig(_Strict):
    task: EvalTask = Field(
        "generation",
        description="Metrics: generation (BLEU...), qa (short answers: the share that contains a reference, and "
        "exact match, both after normalising case, punctuation and articles), classification (accuracy), text "
        "(perplexity), retrieval (nDCG@10, MRR@10, Recall@100, P@10 of an encoder over a BEIR folder), "
        "preference (held-out pairs: preference accuracy and log-prob margins), "
        "tool_calls (BFCL's AST match of the calls made: exact-call, name and argument accuracy, JSON validity, "
        "no-call accuracy, per category; test items carry `possible_answer`, see data/tool_calling/SOURCE.md), "
        "graded (OpenAI reinforcement JSONL scored by rl.grader: mean score and pass rate).",
    )
    labels: list[str] | None = Field(
        None,
        description="Decoder classification: the label set the model chooses from (required there; every test "
        "answer must be one of them). Encoder classification takes its labels from the training data.",
    )
    few_shot_k: int | None = Field(
        None,
        ge=0,
        description="In-context examples; null = the most that fit the context, up to 8; 0 = no few-shot variant.",
    )
    few_shot_selection: Literal["random", "similar"] = Field(
        "random", description="How examples are drawn: seeded random, or most token overlap with the prompt."
    )
    context_tokens: int | None = Field(
        None, ge=1, description="Prompt-token budget for few-shot; null = model context minus max_new_tokens."
    )
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N test items.")
    qrels: str = Field(
        "test",
        pattern=r"^[\w.-]+$",
        description="Retrieval: the judgements of data.test's BEIR folder to evaluate, qrels/<name>.tsv.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Generation length limit.")
    batch_size: int = Field(16, ge=1, description="Generation batch size.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (only when temperature > 0).")
    seed: int = Field(0, description="Seed for few-shot draws, sampling and bootstrap resampling.")
    bootstrap_resamples: int = Field(1000, ge=10, description="Resamples for the 95% confidence intervals.")
    general_text: str | None = Field(None, description="General-text file for the forgetting monitor.")
    decoder: str | None = Field(
        None,
        description="Encoder classification: also score this decoder (built-in name, HF folder or .gguf) zero-shot "
        "and few-shot on the same test texts, each prompted with the label set: an encoder or an LLM for this task?",
    )
    samples: int = Field(5, ge=0, description="Held-out items printed side by side after training.")
    rag: RagConfig | None = Field(
        None,
        description="Retrieval-augmented variants: the base and the fine-tuned model with the top-k passages of "
        "{corpus, retriever, k} before each question, scored against fine-tuning (docs/evaluation.md).",
    )

    @model_validator(mode="after")
    def _rag_needs_prompts(self):
        if self.rag is not None and self.task not in PROMPTED_TASKS:
            raise ValueError(
                f"eval.rag puts passages into prompts: it applies to eval.task {', '.join(PROMPTED_TASKS)}, "
                f"not {self.task}"
            )
        return self


class RLConfig(_Strict):
    """method.name=grpo: Group Relative Policy Optimization (Shao et al., 2024) against a grader."""

    grader: dict | str | None = Field(
        None,
        description="The grader that scores each sampled answer: OpenAI's grader JSON inline, the path of a "
        "JSON file holding it, or the path of a .py file defining grade(sample, item) (a python grader) "
        "(required for method.name=grpo; checked before the model loads).",
    )
    group_size: int = Field(
        4, ge=2, description="Answers sampled per prompt; each is judged against the mean of its group."
    )
    max_new_tokens: int = Field(64, ge=1, description="Length limit of a sampled answer.")
    eval_samples: int = Field(
        1,
        ge=1,
        description="Answers per validation prompt at each evaluation: 1 = one greedy answer; more are sampled "
        "at rl.temperature and their rewards averaged (a less noisy estimate of what training samples).",
    )
    temperature: float = Field(
        1.0, gt=0.0, description="Sampling temperature of the rollouts (> 0: a group of greedy answers is one answer)."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of the rollouts.")
    rollout_batch_size: int = Field(16, ge=1, description="Answers generated together in one batched decode.")
    beta: float = Field(
        0.04,
        ge=0.0,
        description="Weight of the KL penalty to the reference (the model before training), k3 estimator per "
        "answer token. 0.04 as in DeepSeekMath and TRL's first default: with LoRA the reference costs one "
        "no-grad forward with the adapter disabled, and it keeps a small model from drifting into "
        "degenerate text that happens to score; 0 (DAPO, Dr. GRPO) skips that forward.",
    )
    epsilon: float = Field(
        0.2, gt=0.0, lt=1.0, description="PPO ratio clip: the ratio pi/pi_old is kept within [1 - eps, 1 + eps]."
    )
    loss_normalisation: Literal["token", "sequence"] = Field(
        "token",
        description="`token` (default, as DAPO and Dr. GRPO): the step's summed per-token loss divided by the "
        "step's answer tokens, so every answer token weighs the same and a long wrong answer is not "
        "penalised less per token than a short one; `sequence` (the original GRPO): each answer's mean "
        "token loss, averaged over answers, which favours long wrong answers and short right ones.",
    )
    scale_rewards: bool = Field(
        True,
        description="Divide each group's advantages by its reward standard deviation (GRPO). False (Dr. GRPO) "
        "keeps them unscaled, which avoids over-weighting groups that are nearly all right or all wrong; "
        "on by default because grader rewards have no common scale across tasks and the division makes lr "
        "transfer between graders.",
    )
    num_iterations: int = Field(
        1,
        ge=1,
        le=1,
        description="Policy updates per rollout. 1: the ratio is 1 at the update, but the clipped form is kept "
        "so the loss and its gradient are GRPO's.",
    )


class DistributedConfig(_Strict):
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="How several processes share a run (`tunesmith train --nproc-per-node N`): ddp copies the "
        "model to every process and averages gradients; fsdp (FSDP2 `fully_shard` per decoder layer) shards "
        "weights, gradients and AdamW state, so memory per process falls with their number (a tied embedding "
        "is split by vocabulary rows, with train.fast_paths); auto = ddp for "
        "LoRA, fsdp for full fine-tuning. One process ignores it.",
    )
    timeout_s: int = Field(
        60,
        ge=5,
        description="Seconds a process waits for the others in a collective before the run fails: a dead "
        "process stops the rest within this time instead of hanging them.",
    )


class TokenizerConfig(_Strict):
    add_tokens: list[str] | str | None = Field(
        None,
        description="Domain vocabulary added as normal tokens: a list, or a file with one token per line; for "
        "decoders and every encoder objective (e.g. medical terms before `mlm` domain adaptation). Each new "
        "embedding row (and an MLM head's bias) starts as the mean of the pieces the tokenizer split the word "
        "into; under LoRA the new rows train as PEFT trainable tokens. The tokenizer is saved with the run.",
    )


# Keys a search may not change: what the trials are scored on, where they go, and the test split
# kept for the one final evaluation.
UNTUNABLE = ("tune", "eval", "out_dir", "data.train", "data.validation", "data.test")
# `method.alpha` as a multiple of `method.r` (the update's scale alpha / r), searched apart from r.
ALPHA_PER_R = "method.alpha_per_r"


class SearchRange(_Strict):
    # Integer bounds mean an integer search (method.r, train.warmup_steps): `int | float` keeps them integers.
    low: int | float = Field(description="Smallest value searched.")
    high: int | float = Field(description="Largest value searched.")
    log: bool = Field(False, description="Search on a log scale (for learning rates and other scales).")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


# A range (a mapping) or a list of choices: told apart by the input's shape, so an error speaks of one.
SearchEntry = Annotated[
    Annotated[SearchRange, Tag("range")]
    | Annotated[list[bool | int | float | str], Field(min_length=1), Tag("choices")],
    Discriminator(lambda value: "range" if isinstance(value, (dict, SearchRange)) else "choices"),
]


class TuneConfig(_Strict):
    """`tunesmith tune`: a hyperparameter search whose trials are scored on data.validation (docs/tuning.md)."""

    space: dict[str, SearchEntry] | None = Field(
        None,
        description="What is searched: config keys mapped to a range {low, high, log} (integers when both "
        "bounds are integers) or a list of choices, e.g. {train.lr: {low: 1e-5, high: 1e-3, log: true}, "
        "method.r: [8, 16, 32]}; `method.alpha_per_r` searches method.alpha as a multiple of method.r. null: "
        "the method's default space (docs/tuning.md).",
    )
    metric: str | None = Field(
        None,
        description="The validation number a trial is scored on: an eval.task metric (generation: bleu, rouge_l, "
        "chrf, exact_match; qa: contains, exact_match; classification: accuracy, macro_f1, parse_rate; text: "
        "perplexity; a contrastive encoder's retrieval: ndcg@10, mrr@10, recall@100; DPO: reward_accuracy; "
        "GRPO: reward, the grader's mean on the validation prompts; an encoder classifier: accuracy) or val_loss; "
        "default: the task's first metric, val_loss for tasks the search cannot score.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None,
        description="Whether a higher or lower metric is better; default: as the metric says (loss, "
        "perplexity: minimize).",
    )
    max_forgetting: float | None = Field(
        None,
        gt=0,
        description="Forgetting budget: the most a trial's general-text perplexity (eval.general_text) may rise "
        "over the base model's, relative (0.05 = 5%); a trial over it is never chosen. null: no budget.",
    )
    trials: int = Field(20, ge=1, description="Trials in the study (`--trials` overrides it).")
    seed: int = Field(0, description="Seed of the sampler (TPE).")
    pruning: bool = Field(
        True,
        description="Stop a trial at an evaluation (train.eval_every) when its validation loss is worse than the "
        "median of earlier trials at the same step.",
    )
    startup_trials: int = Field(
        5, ge=0, description="Trials sampled at random before TPE models the results and before pruning starts."
    )
    baseline: bool = Field(
        True,
        description="Trial 0 trains the config's own values of the searched keys (when each lies in the space), "
        "so the study shows whether the search beat the config as written.",
    )

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space):
        if space is None:
            return space
        if not space:
            raise ValueError("an empty space searches nothing: name at least one key, or null for the default")
        known = set(field_names(Config))
        sections = {name.rsplit(".", 1)[0] for name in known if "." in name}
        for key in space:
            if key == ALPHA_PER_R:
                continue
            if key.startswith(tuple(u + "." for u in UNTUNABLE)) or key in UNTUNABLE:
                raise ValueError(f"{key} cannot be searched (a search never changes {', '.join(UNTUNABLE)})")
            if key in sections:
                raise ValueError(f"{key!r} is a section: name one of its keys, e.g. {key}.{_first_key(key)}")
            if key not in known:
                raise ValueError(f"{key!r} is not a config key{did_you_mean(key, sorted(known))}")
        if ALPHA_PER_R in space and "method.alpha" in space:
            raise ValueError(f"search {ALPHA_PER_R} or method.alpha, not both")
        return space


class Config(_Strict):
    model: str = Field(
        "smollm2-135m-instruct", description="Built-in name, HF folder, Hugging Face Hub id (owner/name) or .gguf path."
    )
    data: DataConfig = Field(description="Where the data is and how to read it.")
    method: MethodConfig = Field(
        default_factory=MethodConfig,
        description="What is trained: a LoRA adapter, all weights, or DPO on preference pairs; and the objective "
        "(decoder SFT, or an encoder objective).",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation settings.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Training on several processes and machines."
    )
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Encoder objective settings.")
    rl: RLConfig = Field(default_factory=RLConfig, description="Reinforcement fine-tuning (method.name=grpo).")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokens added to the vocabulary.")
    tune: TuneConfig = Field(
        default_factory=TuneConfig, description="Hyperparameter search (`tunesmith tune`; ignored by train)."
    )
    out_dir: str = Field("runs/default", description="Run folder: adapter, merged model, metrics, checkpoints.")

    @model_validator(mode="after")
    def _plain_path_pads(self):
        if not self.train.fast_paths:
            if self.data.packing and "packing" in self.data.model_fields_set:
                raise ValueError("data.packing=true needs the packed attention of train.fast_paths=true")
            self.data.packing = False  # packed rows need the packed attention kernel
        return self

    @model_validator(mode="after")
    def _maxsim_is_for_retrieval(self):
        if self.encoder.scoring == "maxsim" and self.method.objective != "contrastive":
            raise ValueError(
                f"encoder.scoring=maxsim scores queries against documents: it needs method.objective=contrastive, "
                f"not {self.method.objective}"
            )
        return self

    @model_validator(mode="after")
    def _pairs_need_dpo(self):
        pairs = self.data.format in PREFERENCE_FORMATS
        if pairs and self.method.name != "dpo":
            raise ValueError(f"data.format={self.data.format} is preference data: it needs method.name=dpo")
        if self.method.name == "dpo" and self.data.format not in ("auto", *PREFERENCE_FORMATS):
            raise ValueError(f"method.name=dpo needs preference pairs, not data.format={self.data.format}")
        return self

    @model_validator(mode="after")
    def _grpo_needs_a_grader(self):
        if self.method.name == "grpo" and self.rl.grader is None:
            raise ValueError("method.name=grpo needs rl.grader (OpenAI grader JSON, inline or a file path)")
        if self.method.name == "grpo" and self.data.format != "auto":
            raise ValueError(f"method.name=grpo reads OpenAI reinforcement JSONL, not data.format={self.data.format}")
        if self.eval.task == "graded" and self.rl.grader is None:
            raise ValueError("eval.task=graded needs rl.grader (OpenAI grader JSON, inline or a file path)")
        if self.method.name != "grpo" and self.rl.model_copy(update={"grader": None}) != RLConfig():
            raise ValueError(f"the rl section only applies to method.name=grpo (got method.name={self.method.name})")
        if self.method.name != "grpo" and self.rl.grader is not None and self.eval.task != "graded":
            raise ValueError("rl.grader applies to method.name=grpo or eval.task=graded")
        return self

    @model_validator(mode="after")
    def _forgetting_budget_needs_general_text(self):
        if self.tune.max_forgetting is not None and not self.eval.general_text:
            raise ValueError("tune.max_forgetting needs eval.general_text: the text whose perplexity measures it")
        return self


def _first_key(section: str) -> str:
    return next(name for name in field_names(Config) if name.startswith(section + ".")).rsplit(".", 1)[1]


def field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        sub = field.annotation
        for candidate in getattr(sub, "__args__", (sub,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names.extend(field_names(candidate, prefix + name + "."))
    return names


def _explain(error: ValidationError, source: str, overrides: list[str]) -> str:
    known = field_names(Config)
    problems: dict[str, list[str]] = {}
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            problem = f"unknown key {key!r}{did_you_mean(key, known)}"
        elif item["type"] == "missing":
            problem = f"missing key {key!r}"
        else:
            problem = _bad_value(key or "config", item)
        problems.setdefault(_origin(key, source, overrides), []).append(problem)
    return "; ".join(f"{origin}: {'; '.join(lines)}" for origin, lines in problems.items())


def _origin(key: str, source: str, overrides: list[str]) -> str:
    """Who set `key`: the last override that wrote it or a section around it, else the file."""
    for text in reversed(overrides):
        written = text.split("=", 1)[0].strip()
        if key and (key == written or key.startswith(written + ".") or written.startswith(key + ".")):
            return f"override {text!r}"
    return f"{source}: invalid config"


def _bad_value(name: str, item) -> str:
    # pydantic's message names the accepted values: a Literal's choices, a bound's limit.
    return f"{name}: {item['msg']} (got {item.get('input')!r})"


def from_flags(section: type[BaseModel], flags: dict[str, str], **values: Any) -> BaseModel:
    """A config section built from command-line flags, so they obey the config's own rules; a bad value is
    one line naming its flag. `flags` maps fields to flags where the flag is not `--field-name`."""
    try:
        return section(**values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else ""
            problems.append(_bad_value(flags.get(field, "--" + field.replace("_", "-")), item))
        raise TunesmithError("; ".join(problems)) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise TunesmithError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TunesmithError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate `raw` with dotted `overrides` applied; an error names the override or `source` that caused it."""
    overrides = list(overrides or [])
    try:
        return Config.model_validate(apply_overrides(raw, overrides))
    except ValidationError as error:
        raise TunesmithError(_explain(error, source, overrides)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read YAML, apply dotted overrides, validate; relative data paths stay relative to the CWD."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise TunesmithError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise TunesmithError(f"{path}: the config must be a mapping of keys to values")
    return config_from_dict(raw, str(path), overrides)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tunesmith.config_docs import render_markdown
    from tunesmith.paths import write_text_atomic

    parser = argparse.ArgumentParser(prog="python -m tunesmith.config", description="The configuration reference.")
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="docs/configuration.md",
        required=True,
        metavar="PATH",
        help="write the Markdown reference of every config key to PATH (default: %(const)s)",
    )
    args = parser.parse_args(argv)
    write_text_atomic(args.markdown, render_markdown(Config))
    print(args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
