# ruff: noqa: E501  (a one-off migration script: its long lines are the code it writes)
"""Split serve/api.py and serve/worker.py by resource (run from the repo root)."""

import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
serve = root / "src/tunesmith/serve"
api = (serve / "api.py").read_text()
worker = (serve / "worker.py").read_text()


def between(text, start, end=None):
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j]


imports_api = between(api, "from __future__ import annotations", "log = logging.getLogger")
imports_worker = between(worker, "from __future__ import annotations", "log = logging.getLogger")
LOG = 'log = logging.getLogger("tunesmith.serve")\n\n'


def write(path, doc, imports, body, log=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'"""{doc}"""\n\n' + imports + (LOG if log else "") + "\n" + body.strip() + "\n")


# constants block of api.py
consts = between(api, "DEFAULT_MAX_UPLOAD_BYTES", "@dataclass\nclass ServeSettings")


def const(name):
    m = re.search(rf"^{name} = .*?(?=^\w|\Z)", consts, re.S | re.M)
    return m.group(0) if m else ""


settings_and_app = between(api, "@dataclass\nclass ServeSettings", "# --- errors")
errors = between(api, "def _validation_message", "async def _json_body")
shared = between(api, "async def _json_body", "# --- files")
files = between(api, "def file_object", "# --- fine-tuning jobs")
jobs = between(api, "def _hyperparameters", "# --- models")
models = between(api, "def _export_routes", "# --- inference")
inference = between(api, "def _inference_routes", "async def _in_thread")
in_thread = between(api, "async def _in_thread")

app_doc = between(api, '"""', "from __future__")[3:].rsplit('"""', 1)[0]
write(
    serve / "app.py",
    app_doc.strip() + "\n\nRoutes live in serve/routes/ (one module per resource); this module builds the app.\n",
    imports_api,
    const("DEFAULT_MAX_UPLOAD_BYTES") + const("DEFAULT_MAX_BODY_BYTES") + "\n\n" + settings_and_app + errors,
    log=True,
)
write(
    serve / "routes/__init__.py", "The API's routes, one module per resource: files, jobs, models, inference.\n", "", ""
)
write(
    serve / "routes/params.py",
    "What every route shares: the caller's organisation, list pages, JSON bodies.\n",
    imports_api,
    shared,
)
write(
    serve / "routes/files.py",
    "/v1/files: upload (streamed, checked as JSONL), list, retrieve, content, delete.\n",
    imports_api,
    const("UPLOAD_PREFIX") + "\n\n" + files,
)
jobs_consts = "".join(const(n) for n in ("SUFFIX_RE", "HYPERPARAMETERS", "METHOD_HYPERPARAMETERS"))
write(
    serve / "routes/jobs.py",
    "/v1/fine_tuning/jobs: create (validated here, trained by serve/jobs/supervisor.py), list, retrieve,\ncancel, events, checkpoints.\n",
    imports_api,
    jobs_consts + "\n\n" + jobs,
)
write(
    serve / "routes/models.py",
    "/v1/models: built-in bases and the organisation's fine-tunes; delete; GGUF export.\n",
    imports_api,
    const("BASE_MODEL_CREATED") + "\n\n" + models + "\n\n" + in_thread,
    log=True,
)
write(
    serve / "routes/inference.py",
    "/v1/chat/completions and /v1/completions, streamed or whole, on the inference pool.\n",
    imports_api,
    inference,
    log=True,
)

# worker.py
wconsts = between(worker, "BASE_LORA_LR", "def default_trainer_command")
policy_body = between(worker, "def resolve_hyperparameters", "# --- data validation")
validate_body = between(worker, "@dataclass\nclass DataCheck", "# --- the supervisor")
sup_body = between(worker, "# --- the supervisor")
sup_doc = between(worker, '"""', "from __future__")[3:].rsplit('"""', 1)[0]
policy_consts = "".join(
    re.findall(
        r"^(?:BASE_LORA_LR|AUTO_EPOCHS|MIN_EXAMPLES_SEEN|MAX_EXAMPLES_SEEN|MAX_AUTO_EPOCHS|MAX_AUTO_BATCH|DPO_BETA|VAL_FRACTION) = .*\n",
        wconsts,
        re.M,
    )
)
sup_consts = "".join(re.findall(r"^(?:MAX_ATTEMPTS|STOP_GRACE_SECONDS) = .*\n", wconsts, re.M))
write(
    serve / "jobs/__init__.py",
    "Fine-tuning jobs: their policy (auto hyperparameters), file validation and supervision.\n",
    "",
    "",
)
write(
    serve / "jobs/policy.py",
    'What a job trains with when the request leaves it to the service ("auto").\n',
    imports_worker,
    policy_consts + "\n\n" + policy_body,
)
write(
    serve / "jobs/validate.py",
    "A job's files checked before it is queued, with the data package's reader and validator.\n",
    imports_worker,
    validate_body,
)
write(
    serve / "jobs/supervisor.py",
    sup_doc.strip() + "\n",
    imports_worker,
    sup_consts
    + "\n\n"
    + between(worker, "def default_trainer_command", "def resolve_hyperparameters")
    + sup_body.split("\n", 2)[2],
    log=True,
)
(serve / "api.py").unlink()
(serve / "worker.py").unlink()

# --- post-processing: settings module, route registration names, cross-module imports ---
app_text = (serve / "app.py").read_text()
settings_code = between(app_text, "@dataclass\nclass ServeSettings", "def create_app")
defaults = const("DEFAULT_MAX_UPLOAD_BYTES") + const("DEFAULT_MAX_BODY_BYTES")
app_text = app_text.replace(settings_code, "").replace(defaults, "")
(serve / "settings.py").write_text(
    '"""What `tunesmith serve` is configured with (its command-line options)."""\n\n'
    "from __future__ import annotations\n\nfrom dataclasses import dataclass, field\nfrom pathlib import Path\n\n"
    + defaults
    + "\n\n"
    + settings_code.rstrip()
    + "\n"
)
app_text = app_text.replace(
    """    _files_routes(app)
    _job_routes(app)
    _export_routes(app)  # before the model routes: their {model_id:path} would take ".../content" too
    _model_routes(app)
    _inference_routes(app)
""",
    """    files.add_routes(app)
    jobs.add_routes(app)
    models.add_routes(app)
    inference.add_routes(app)
""",
)
app_text = app_text.replace(
    "from tunesmith.serve.auth import current_org\n",
    "from tunesmith.serve.routes import files, inference, jobs, models\nfrom tunesmith.serve.settings import ServeSettings\n",
)
app_text = app_text.replace(
    "from tunesmith.serve.worker import Worker", "from tunesmith.serve.jobs.supervisor import Worker"
)
(serve / "app.py").write_text(app_text)

ROUTE_IMPORTS = "from tunesmith.serve.routes.params import Limit, Org, json_body, page\nfrom tunesmith.serve.settings import ServeSettings\n"
for name, old in (("files", "_files_routes"), ("jobs", "_job_routes"), ("inference", "_inference_routes")):
    p = serve / "routes" / f"{name}.py"
    t = p.read_text().replace(f"def {old}(app: FastAPI)", "def add_routes(app: FastAPI)")
    t = t.replace(
        "from tunesmith.serve.auth import current_org\n",
        "from tunesmith.serve.auth import current_org\n" + ROUTE_IMPORTS,
    )
    p.write_text(t)
p = serve / "routes/models.py"
t = p.read_text().replace(
    "from tunesmith.serve.auth import current_org\n", "from tunesmith.serve.auth import current_org\n" + ROUTE_IMPORTS
)
t += """

def add_routes(app: FastAPI) -> None:
    _export_routes(app)  # before the model routes: their {model_id:path} would take ".../content" too
    _model_routes(app)
"""
p.write_text(t)
for p in list((serve / "routes").glob("*.py")) + [serve / "embeddings.py"]:
    t = p.read_text()
    t = re.sub(r"\b_json_body\b", "json_body", t).replace(
        "from tunesmith.serve.api import json_body", "from tunesmith.serve.routes.params import json_body"
    )
    t = re.sub(r"\b_page\(", "page(", t)
    p.write_text(t)
p = serve / "jobs/supervisor.py"
t = p.read_text().replace(
    "from tunesmith.runfolder import",
    "from tunesmith.serve.jobs.policy import BASE_LORA_LR, VAL_FRACTION, resolve_hyperparameters\n"
    "from tunesmith.serve.jobs.validate import check_job_files\nfrom tunesmith.runfolder import",
)
p.write_text(t)
p = serve / "cli.py"
t = p.read_text().replace(
    "from tunesmith.serve.api import ServeSettings, create_app",
    "from tunesmith.serve.app import create_app\n    from tunesmith.serve.settings import ServeSettings",
)
t = t.replace(
    "from tunesmith.serve.worker import parse_trainer_command",
    "from tunesmith.serve.jobs.supervisor import parse_trainer_command",
)
p.write_text(t)
tests = root / "tests/serve"
if tests.is_dir():
    for p in tests.glob("*.py"):
        t = p.read_text()
        t = t.replace(
            "from tunesmith.serve.worker import resolve_hyperparameters",
            "from tunesmith.serve.jobs.policy import resolve_hyperparameters",
        )
        t = t.replace(
            "from tunesmith.serve.worker import MAX_ATTEMPTS, STOP_GRACE_SECONDS, Worker",
            "from tunesmith.serve.jobs.supervisor import MAX_ATTEMPTS, STOP_GRACE_SECONDS, Worker",
        )
        p.write_text(t)

# --- the supervisor reads the run folder through tunesmith.runfolder ---
p = serve / "jobs/supervisor.py"
t = p.read_text()
t = t.replace(between(t, "def checkpoint_steps(out_dir: Path)", "def openai_metrics"), "")
t = re.sub(r"^CHECKPOINT_RE = .*\n", "", t, flags=re.M)
t = t.replace(
    "from tunesmith.runfolder import lock_holder",
    "from tunesmith.runfolder import (\n    CHECKPOINTS,\n    METRICS,\n    checkpoint_path,\n    checkpoint_steps,\n"
    "    lock_holder,\n    parse_metrics,\n    read_metrics,\n    read_summary,\n)",
)
for old, new in (
    ('path = run.out_dir / "metrics.jsonl"', "path = run.out_dir / METRICS"),
    (
        """        for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = row.get("step") if isinstance(row, dict) else None
            if not isinstance(step, int) or step <= last_step:
                continue
""",
        """        for row in parse_metrics(chunk[:end].decode("utf-8", errors="replace")):
            step = row["step"]
            if step <= last_step:
                continue
""",
    ),
    (
        'path = run.out_dir / "checkpoints" / f"step-{step:06d}"',
        "path = checkpoint_path(run.out_dir / CHECKPOINTS, step)",
    ),
    (
        """        summary = {}
        try:
            summary = json.loads((run.out_dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
""",
        """        summary = read_summary(run.out_dir) or {}
""",
    ),
):
    assert old in t, old
    t = t.replace(old, new)
p.write_text(t)
