"""A stand-in for `python -m tunesmith train CONFIG --overwrite|--resume` with the same outputs.

Writes metrics.jsonl lines, atomically renamed checkpoints/step-NNNNNN folders, adapter/ (merged/
for an encoder job) and summary.json through tunesmith.runfolder (as the real trainer does), at
FAKE_STEP_SECONDS per step, holding the run folder's lock as the real trainer does.
FAKE_TRAINER_MODE=crash dies half-way, =usererror exits 2 with one stderr line, =nan writes NaN
and infinite numbers into metrics.jsonl raw, as a trainer outside tunesmith.runfolder could.
"""

import json
import os
import sys
import time
from pathlib import Path

import yaml

from tunesmith.runfolder import (
    CHECKPOINTS,
    METRICS,
    MetricsLog,
    checkpoint_path,
    checkpoint_steps,
    locked,
    write_summary,
)

config_path, flag = sys.argv[1], sys.argv[2]
config = yaml.safe_load(Path(config_path).read_text())
out = Path(config["out_dir"])
train = config["train"]
n = sum(1 for line in open(config["data"]["train"]) if line.strip())
total = -(-n // train["batch_size"]) * int(train["epochs"])
mode = os.environ.get("FAKE_TRAINER_MODE", "")
delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.05"))

out.mkdir(parents=True, exist_ok=True)
lock = locked(out)
lock.__enter__()  # held until the process ends, as the real trainer holds it
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))  # what the server asked for

start = 0
if flag == "--resume":
    steps = checkpoint_steps(out)
    start = steps[-1] if steps else 0
    (out / "resumed_from").write_text(str(start))
else:
    (out / METRICS).unlink(missing_ok=True)
metrics = MetricsLog(out / METRICS, start if flag == "--resume" else None)

if mode == "usererror":
    print(f"{config['data']['train']}: lines 2, 5: messages: missing", file=sys.stderr)
    sys.exit(2)

for step in range(start + 1, total + 1):
    time.sleep(delay)
    if mode == "crash" and step > total // 2:
        print(f"RuntimeError: fake out of memory saving {out / CHECKPOINTS}", file=sys.stderr)
        os.abort()
    row = {
        "step": step,
        "epoch": step / total,
        "train_loss": 2.0 / step,
        "train_accuracy": 0.5,
        "lr": 1e-4,
        "tokens_per_second": 100.0,
        "grad_norm": 1.0,
        "peak_rss_mb": 10.0,
    }
    if mode == "nan":
        row.update(train_loss=float("nan"), grad_norm=float("inf"))
    if step % train["eval_every"] == 0:
        row.update(val_loss=2.5 / step, val_accuracy=0.4)
    if mode == "nan":
        with open(out / METRICS, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    elif step % train["log_every"] == 0:
        metrics.write(row)
    if step % train["save_every"] == 0:
        tmp = out / CHECKPOINTS / f".tmp-{step}"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        tmp.rename(checkpoint_path(out / CHECKPOINTS, step))

# A decoder job serves its LoRA adapter; an encoder (contrastive) job trains all weights and serves
# the exported folder.
encoder = config.get("method", {}).get("objective") == "contrastive"
folder, marker = ("merged", "config.json") if encoder else ("adapter", "adapter_config.json")
(out / folder).mkdir(exist_ok=True)
(out / folder / marker).write_text("{}")
write_summary(
    out, {"steps": total, "trained_tokens": 1000 * total, "best_step": total, "best_val_loss": 0.1, "wall_seconds": 1.0}
)
