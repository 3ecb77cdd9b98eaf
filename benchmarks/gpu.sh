#!/usr/bin/env bash
# The tunesmith vs TRL comparison on one CUDA GPU, in under 5 minutes:
#   bash benchmarks/gpu.sh            (from the repository root, in the project venv with .[bench])
# 1. SmolLM2-135M-Instruct (the real weights), the main configurations, 20 steps, bf16 autocast.
# 2. A ~1B model of the same family (SmolLM2 shape, 16 layers of width 2048, random weights, so its
#    validation loss means nothing) for MFU: the 135M model is too small to keep an H100-class GPU busy.
# 3. With more than one GPU: the ~1B model's full fine-tuning on all of them (FSDP2) against one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
export TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# Each configuration is a fresh process (~15 s of start-up and loading on top of its steps).
"$PY" benchmarks/train_throughput.py --steps 20 --out "$OUT/train_throughput_gpu.md" \
  --only tunesmith-lora trl-lora-defaults trl-lora-padding-free trl-lora-packed tunesmith-full trl-full-defaults

BIG=${TUNESMITH_HOME:-$HOME/.cache/tunesmith}/models/smollm2-1b-random
"$PY" - "$BIG" <<'PY'
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.models import load_tokenizer

target = Path(sys.argv[1])
if not (target / "config.json").is_file():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=130000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialising 1B parameters on the CPU would take a minute
        model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {target}")
PY

"$PY" benchmarks/train_throughput.py --model "$BIG" --steps 15 \
  --only tunesmith-lora trl-lora-defaults tunesmith-full trl-full-defaults \
  --out "$OUT/train_throughput_gpu_1b.md"

# 3. Several GPUs: full fine-tuning of the ~1B model on every GPU (FSDP2, NCCL) against one GPU,
#    the same global batch. Skipped on a single-GPU machine.
GPUS=$(nvidia-smi --list-gpus | wc -l)
if [ "$GPUS" -gt 1 ]; then
  "$PY" benchmarks/distributed.py --model "$BIG" --procs "$GPUS" --steps 15 --warmup 5 --batch-size 8 \
    --out "$OUT/distributed_gpu.md"
fi
