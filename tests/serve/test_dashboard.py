"""The dashboard (serve/web): its pages' headers, and a real browser driving a real server end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from test_reinforcement_jobs import GRADER
from test_serve_api import chat_rows
from test_serve_tools import TOOLS

from tunesmith.serve import web

PAGES = ["/ui/login", "/ui/files", "/ui/jobs", "/ui/jobs/ftjob-abc", "/ui/models", "/ui/playground", "/ui/compare"]
STATIC = ["/ui/static/common.js", "/ui/static/dashboard.css", "/ui/static/vendor/uPlot.iife.min.js"]


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    return TestClient(create_app(ServeSettings(home=tmp_path_factory.mktemp("home"))))


@pytest.mark.parametrize(
    "path, status, kind",
    [
        *[(p, 200, "text/html") for p in PAGES],
        ("/ui/static/common.js", 200, "text/javascript"),
        ("/ui/static/dashboard.css", 200, "text/css"),
        ("/ui/static/vendor/uPlot.iife.min.js", 200, "text/javascript"),
    ],
)
def test_pages_need_no_key_and_carry_the_csp(app_client, path, status, kind):
    # The shells hold no data: the organisation's objects come from /v1, behind the key.
    response = app_client.get(path)
    assert response.status_code == status and response.headers["content-type"].startswith(kind)
    assert response.headers["content-security-policy"] == web.CSP
    assert "script-src 'self';" in web.CSP and "frame-ancestors 'none'" in web.CSP
    assert "set-cookie" not in response.headers  # no cookie, so nothing for a forged request to ride on


@pytest.mark.parametrize(
    "path, status",
    [
        ("/ui/static/../__init__.py", 404),
        ("/ui/static/%2e%2e/__init__.py", 404),
        ("/ui/static/nope.js", 404),
        ("/ui/nope", 404),
    ],
)
def test_only_the_static_folder_is_served(app_client, path, status):
    response = app_client.get(path)
    assert response.status_code == status and response.json()["error"]["message"] == "Unknown URL"


def test_home_opens_the_jobs_page(app_client):
    response = app_client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/jobs"


def test_a_form_posted_without_the_script_is_refused_and_carries_no_key(app_client):
    response = app_client.post("/ui/login", data={"key": "sk-x"})
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    # The key's input has no name attribute, so a browser would not send it in the first place.
    assert re.search(r'<input id="key"[^>]*>', app_client.get("/ui/login").text).group(0).find("name=") == -1


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(web.__file__).parent / "templates").glob("*.html")))
def test_templates_have_no_inline_script_or_style(name):
    # The CSP would block them: the page would break in the browser, silently.
    text = (Path(web.__file__).parent / "templates" / name).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text)
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", text)


# --- a real browser -----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTHS = [1280, 390]
# The ids of visible form controls that have neither a <label> nor an aria-label.
UNLABELLED = """[...document.querySelectorAll("input, select, textarea, progress")]
  .filter((c) => c.offsetParent !== null && !c.labels?.length && !c.getAttribute("aria-label"))
  .map((c) => c.id || c.outerHTML)"""


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it and runs this test")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Session:
    """One browser context logged in with one organisation's key; it records what the CSP refused."""

    def __init__(self, browser, base: str, key: str):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.page.on(
            "console",
            lambda m: self.problems.append(m.text) if "Content Security Policy" in m.text else None,
        )
        self.page.goto(base + "/")
        self.page.wait_for_url("**/ui/login")  # no key yet: the login page
        # From the keyboard alone: the skip link, then the key's box; Enter submits.
        self.page.keyboard.press("Tab")
        self.page.keyboard.press("Tab")
        assert self.page.evaluate("document.activeElement.id") == "key"
        self.page.keyboard.type("sk-wrong")
        self.page.keyboard.press("Enter")
        expect(self.page.locator("#error")).to_have_text("Incorrect API key provided")
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")
        self.page.wait_for_url("**/ui/jobs")

    def open(self, path: str):
        self.page.goto(self.base + path)
        return self.page


def create_job(page, model: str, suffix: str):
    """Fill the create form (supervised, 1 epoch of 4 batches) and land on the new job's page."""
    page.select_option("#model", model)
    for select, name in (("#training_file", "train.jsonl"), ("#validation_file", "valid.jsonl")):
        page.select_option(select, page.locator(f"{select} option", has_text=name).get_attribute("value"))
    page.fill("#n_epochs", "1")
    page.fill("#batch_size", "4")
    page.fill("#suffix", suffix)
    page.click("#create-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/jobs/ftjob-"))


def show_reinforcement_job(page, base: str):
    """A reinforcement job's page draws the reward curve, not token accuracy, and its checkpoints'
    rewards. The job's API answers are made up here in the shapes the API gives (a real GRPO run is
    test_reinforcement_jobs.py's, minutes long); only the page's reading of them is under test."""
    job_id = "ftjob-rl"
    hyper = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0, "compute_multiplier": 0.5}
    job = {
        "id": job_id, "object": "fine_tuning.job", "status": "running", "model": "m", "created_at": 1,
        "training_file": "file-x", "validation_file": None, "hyperparameters": hyper, "result_files": [],
        "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": hyper}},
    }  # fmt: skip
    metrics = [
        {"step": 1, "train_loss": 0.1, "train_reward": 0.25, "train_pass_rate": 0.25},
        {"step": 2, "train_loss": 0.05, "train_reward": 0.5, "train_pass_rate": 0.5, "val_reward": 0.75},
    ]
    events = [
        {"id": f"ev-{m['step']}", "object": "fine_tuning.job.event", "created_at": 1, "level": "info",
         "message": f"Step {m['step']}/4: training loss={m['train_loss']}", "type": "metrics", "data": m}
        for m in reversed(metrics)
    ]  # fmt: skip
    checkpoint = {"id": "ckpt", "object": "fine_tuning.job.checkpoint", "created_at": 1, "step_number": 2,
                  "metrics": metrics[1], "fine_tuned_model_checkpoint": "ft:m:x::rl:ckpt-step-2"}  # fmt: skip
    answers = {"": job, "/events": events, "/checkpoints": [checkpoint]}

    def answer(route):
        rest = route.request.url.split(job_id, 1)[1].split("?")[0]
        body = answers[rest]
        if isinstance(body, list):
            body = {"object": "list", "data": body, "has_more": False}
        route.fulfill(json=body)

    page.route(f"{base}/v1/fine_tuning/jobs/{job_id}**", answer)
    page.goto(f"{base}/ui/jobs/{job_id}")
    expect(page.locator("#reward-chart canvas")).to_have_count(1)
    assert page.locator("#reward-chart").get_attribute("data-points") == "3"  # two training rewards, one validation
    expect(page.locator("#acc-section")).to_be_hidden()
    expect(page.locator("#summary .progress")).to_have_text("2 / 4 steps")
    expect(page.locator("#summary")).to_contain_text("has_letter")
    expect(page.locator("#checkpoints thead")).to_contain_text("Validation reward")
    expect(page.locator("#checkpoints tbody")).to_contain_text("0.7500")
    expect(page.locator("#pause")).to_be_visible()


def ask_both(page, model_a: str):
    page.select_option("#model-a", model_a)
    page.fill("#max_tokens", "8")
    page.click("#play-form button[type=submit]")
    for side in "ab":
        expect(page.locator(f"#answer-{side}[data-done]")).to_have_count(1, timeout=60_000)
        expect(page.locator(f"#speed-{side}")).to_have_text(re.compile(r"^[1-8] tokens in [\d.]+ s · [\d.]+ tokens/s$"))


def test_dashboard_in_a_browser(make_server, tiny_model_name, browser, tmp_path):
    server = make_server(["--max-running", "1"])
    base = server.url.removesuffix("/v1")
    acme_key, other_key = server.key("acme"), server.key("other")
    shots = Path(os.environ.get("TUNESMITH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    acme = Session(browser, base, acme_key)
    page = acme.page
    assert acme_key not in page.url and acme.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('tunesmith-key')") == acme_key
    auth = {"Authorization": f"Bearer {acme_key}"}

    # Files: a broken file's line errors, then the good ones.
    acme.open("/ui/files")
    broken = b'{"messages": []}\nnot json\n[1, 2]\n'
    page.set_input_files("#file-input", {"name": "broken.jsonl", "mimeType": "application/jsonl", "buffer": broken})
    problems = page.locator("#upload-result .problems li")
    expect(problems).to_have_count(2)
    expect(problems.nth(0)).to_have_text(re.compile(r"^line 2: not valid JSON"))
    expect(problems.nth(1)).to_have_text("line 3: a JSON list, not an object")
    for name, rows in (("train.jsonl", chat_rows(16)), ("valid.jsonl", chat_rows(4, 50))):
        page.set_input_files("#file-input", {"name": name, "mimeType": "application/jsonl", "buffer": jsonl(rows)})
        expect(page.locator("#upload-result")).to_contain_text(f"Uploaded {name} as file-")
    expect(page.locator("#files tbody tr")).to_have_count(2)
    expect(page.locator("#progress")).to_have_attribute("value", "100")

    # Jobs: a reinforcement job's grader is checked by the service before anything is created.
    acme.open("/ui/jobs")
    page.select_option("#method", "reinforcement")
    expect(page.locator("#grader")).to_be_visible()
    expect(page.locator("#beta")).to_be_hidden()
    page.fill("#grader", json.dumps({"type": "string_check", "name": "g", "input": "{{sample.output_text}}"}))
    page.click("#create-form button[type=submit]")
    expect(page.locator("#grader-result")).to_have_text(re.compile(r"^invalid grader: .*reference"))
    expect(page.locator("#error")).to_have_text(page.locator("#grader-result").text_content())
    page.fill("#grader", "{not json")
    page.click("#validate-grader")
    expect(page.locator("#grader-result")).to_have_text(re.compile(r"^grader: not valid JSON"))
    page.fill("#grader", json.dumps(GRADER))
    page.click("#validate-grader")
    expect(page.locator("#grader-result")).to_have_text('The grader "has_letter" is valid.')
    assert httpx.get(f"{server.url}/fine_tuning/jobs", headers=auth).json()["data"] == []

    # Create one on the tiny model and watch it train.
    page.select_option("#method", "supervised")
    expect(page.locator("#grader")).to_be_hidden()
    create_job(page, tiny_model_name, "numbers")
    job_id = page.url.rsplit("/", 1)[1]

    # A second job waits behind it (one training slot): pause, resume and cancel it from its page.
    acme.open("/ui/jobs")
    create_job(page, tiny_model_name, "second")
    expect(page.locator("#status")).to_have_text("queued", timeout=60_000)
    expect(page.locator("#resume")).to_be_hidden()
    page.click("#pause")
    expect(page.locator("#status")).to_have_text("paused")
    expect(page.locator("#pause")).to_be_hidden()
    page.click("#resume")
    expect(page.locator("#status")).to_have_text("queued")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled")
    for button in ("#pause", "#resume", "#cancel"):
        expect(page.locator(button)).to_be_hidden()
    expect(page.locator("#events")).to_contain_text("Fine-tuning job resumed")

    acme.open(f"/ui/jobs/{job_id}")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=300_000)
    loss = page.locator("#loss-chart")
    expect(loss.locator("canvas")).to_have_count(1)
    assert int(loss.get_attribute("data-points")) >= 5  # 4 training steps and at least one validation loss
    expect(page.locator("#summary .progress")).to_have_text("4 / 4 steps")
    expect(page.locator("#checkpoints thead")).to_contain_text("Validation loss")
    expect(page.locator("#checkpoints tbody tr")).not_to_have_count(0)
    expect(page.locator("#events")).to_contain_text("The job has successfully completed")
    expect(page.locator("#results button")).to_have_text("Download step_metrics.csv")
    with page.expect_download() as download:
        page.click("#results button")
    assert Path(download.value.path()).read_text().startswith("step,train_loss,")
    expect(page.locator("#acc-chart canvas")).to_have_count(1)
    expect(page.locator("#reward-section")).to_be_hidden()
    acme.open("/ui/jobs")
    expect(page.locator("#jobs tbody tr", has_text=job_id).locator(".progress")).to_have_text("4 / 4 steps")
    fine_tuned = httpx.get(f"{server.url}/fine_tuning/jobs/{job_id}", headers=auth).json()["fine_tuned_model"]

    # Models: the lineage from the base model.
    acme.open("/ui/models")
    row = page.locator("#models tbody tr", has_text=fine_tuned)
    expect(row.locator(".lineage")).to_contain_text(f"{tiny_model_name} → {fine_tuned}")

    # Playground: the base model and the fine-tune answer side by side, streamed.
    acme.open(f"/ui/playground?model={fine_tuned}")
    ask_both(page, tiny_model_name)
    for side, model in (("a", tiny_model_name), ("b", fine_tuned)):
        # Greedy: the streamed pieces add up to the API's whole answer to the same request.
        body = {"model": model, "messages": [{"role": "user", "content": "Say the number 3."}], "max_tokens": 8}
        whole = httpx.post(f"{server.url}/chat/completions", json={**body, "temperature": 0}, headers=auth, timeout=60)
        assert page.locator(f"#answer-{side}").text_content() == whole.json()["choices"][0]["message"]["content"]
        assert page.locator(f"#answer-{side}").get_attribute("data-chunks") == "8"  # one piece per token

    # Tools: both models are offered one and must call it; the calls show under the answers.
    page.fill("#tools", json.dumps(TOOLS[:1]))
    page.select_option("#tool_choice", "required")
    page.fill("#max_tokens", "60")
    page.click("#play-form button[type=submit]")
    for side in "ab":
        expect(page.locator(f"#answer-{side}[data-done]")).to_have_count(1, timeout=60_000)
        expect(page.locator(f"#calls-{side} li")).to_have_text(re.compile(r"^get_weather\(\{.*\}\)$"))
    page.fill("#tools", "[{")
    page.click("#play-form button[type=submit]")
    expect(page.locator("#error")).to_have_text(re.compile(r"^tools: not valid JSON"))

    show_reinforcement_job(page, base)

    # Compare: the job's curve and hyperparameters.
    acme.open(f"/ui/compare?jobs={job_id}")
    expect(page.locator("#hyper tbody")).to_contain_text("batch_size")
    expect(page.locator("#compare-chart canvas")).to_have_count(1)

    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in [
            ("files", "/ui/files"),
            ("jobs", "/ui/jobs"),
            ("job", f"/ui/jobs/{job_id}"),
            ("models", "/ui/models"),
            ("playground", f"/ui/playground?model={fine_tuned}"),
            ("compare", f"/ui/compare?jobs={job_id}"),
        ]:
            acme.open(path).wait_for_load_state("networkidle")
            if name == "playground":
                ask_both(page, tiny_model_name)
            page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
            # Every control has a label a screen reader reads, and nothing is wider than the window.
            assert page.evaluate(UNLABELLED) == [], name
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
    assert len(list(shots.glob("*.png"))) == 12

    # Another organisation sees none of it; its job page shows the API's message, not a trace.
    other = Session(browser, base, other_key)
    other.open("/ui/files").wait_for_load_state("networkidle")
    expect(other.page.locator("#files tbody tr")).to_have_count(0)
    other.open("/ui/jobs").wait_for_load_state("networkidle")
    expect(other.page.locator("#jobs tbody tr")).to_have_count(0)
    other.open("/ui/models").wait_for_load_state("networkidle")
    expect(other.page.locator("#models tbody tr.fine-tuned")).to_have_count(0)
    other.open(f"/ui/jobs/{job_id}")
    expect(other.page.locator("#error")).to_have_text(f"No such fine-tuning job: {job_id}")

    # Delete the model.
    acme.open("/ui/models")
    page.locator("#models tbody tr", has_text=fine_tuned).get_by_role("button", name=f"Delete {fine_tuned}").click()
    expect(page.locator("#models tbody tr.fine-tuned")).to_have_count(0)
    assert acme.problems == [] and other.problems == []
