"""API fuzzing generated from the service's own OpenAPI schema (schemathesis), against a real
server process: over 1,000 requests across every route, every response passing all of
schemathesis's checks (none 5xx, every status, content type, header and body as documented),
no body naming the server's home, and afterwards every organisation's objects unchanged and
readable."""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from pathlib import Path

import schemathesis
import schemathesis.specs.openapi.checks  # noqa: F401  (registers the OpenAPI checks)
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS
from serve_helpers import wait_for
from test_serve_api import chat_rows, upload

REQUESTS = 1_000
# Where a schema-valid body may still be refused with a 400 (schemathesis.toml says why; the CLI
# reads it there). Every other check still runs on those.
REFUSED_BY_CONTENT = {
    (section["include-method"], section["include-path"])
    for section in tomllib.loads((Path(__file__).parents[2] / "schemathesis.toml").read_text())["operations"]
}
ALL_CHECKS = CHECKS.get_all()
CONTENT_CHECKS = [check for check in ALL_CHECKS if check.__name__ != "positive_data_acceptance"]


def snapshot(client) -> dict:
    """Everything an organisation owns, as the API shows it."""
    jobs = client.fine_tuning.jobs.list().data
    return {
        "files": [(f.id, f.bytes, client.files.content(f.id).content) for f in client.files.list().data],
        "jobs": [(j.id, j.status, j.fine_tuned_model) for j in jobs],
        "events": {j.id: [e.id for e in client.fine_tuning.jobs.list_events(j.id, limit=100).data] for j in jobs},
        "checkpoints": {j.id: [c.id for c in client.fine_tuning.jobs.checkpoints.list(j.id).data] for j in jobs},
        "models": sorted(m.id for m in client.models.list().data),
    }


def test_fuzzing_from_the_openapi_schema_finds_no_5xx(fake_server):
    server = fake_server(args=["--max-upload-mb", "0.1", "--max-body-kb", "64"])
    keys = {org: server.key(org) for org in ("alpha", "beta")}
    clients = {org: server.client(key) for org, key in keys.items()}
    for client in clients.values():
        job = client.fine_tuning.jobs.create(
            model="tiny-llama-test", training_file=upload(client, chat_rows(4)).id, hyperparameters={"n_epochs": 1}
        )
        assert wait_for(client, job.id).status == "succeeded"
    before = {org: snapshot(client) for org, client in clients.items()}

    schema = schemathesis.openapi.from_url(server.url.removesuffix("/v1") + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def fuzz(operation, headers: dict, examples: int) -> None:
        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            response = case.call(headers=headers, timeout=60)
            statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path} {case.body!r:.200} -> {response.status_code}"
            if str(server.home) in response.text or str(server.home.resolve()) in response.text:
                failures.append(f"{where}: names the server's home: {response.text[:300]}")
            try:
                content = (case.method, case.path) in REFUSED_BY_CONTENT and response.status_code == 400
                case.validate_response(response, checks=CONTENT_CHECKS if content else ALL_CHECKS, headers=headers)
            except (
                Exception,
                BaseExceptionGroup,
            ) as error:  # schemathesis's Failure or FailureGroup: what was not as documented
                failures.append(f"{where}: {str(error)[:400]}")

        call()

    rounds = 0
    while sum(statuses.values()) < REQUESTS:  # small operations run out of new cases: go round again
        per_operation = math.ceil((REQUESTS - sum(statuses.values())) / len(operations))
        for i, operation in enumerate(operations):
            key = keys["beta" if (i + rounds) % 3 else "alpha"]
            fuzz(operation, {"Authorization": f"Bearer {key}"} if (i + rounds) % 5 else {}, per_operation)
        rounds += 1
    total = sum(statuses.values())
    print(f"fuzzed {len(operations)} operations with {total} requests: {dict(sorted(statuses.items()))}")
    assert total >= REQUESTS and not failures, f"{len(failures)} failures: " + "\n".join(failures[:10])
    assert {org: snapshot(client) for org, client in clients.items()} == before
