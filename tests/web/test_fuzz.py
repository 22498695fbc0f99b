"""Property-based fuzzing of the public routes from the app's own OpenAPI description
(schemathesis strategies run by hypothesis): whatever the input, never a server error.
Bounded: a few examples per operation, so the file runs in seconds.

The operations are driven by hand rather than by ``schemathesis.pytest.from_fixture``,
whose plugin (schemathesis 4.32) breaks on pytest 9 (``Function._nodeid``)."""

from __future__ import annotations

from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.openapi import from_asgi
from sqlalchemy import Engine

from newsletter.store import subscribers

PUBLIC = r"^/(unsubscribe|subscribe|confirm|archive|preferences|webhooks|healthz)"
EXAMPLES = 25


def test_public_routes_never_answer_5xx(app: FastAPI, engine: Engine) -> None:
    subscribers.add(engine, "fuzz@example.net", status="active")  # something for tokens to miss
    schema = from_asgi("/openapi.json", app).include(path_regex=PUBLIC)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert labels == sorted(
        [
            "GET /archive",
            "GET /archive/{slug}",
            "GET /archive/feed.xml",
            "GET /preferences/{token}",
            "POST /preferences/{token}/name",
            "POST /preferences/{token}/pause",
            "POST /preferences/{token}/resume",
            "POST /preferences/{token}/unsubscribe",
            "POST /preferences/{token}/export",
            "POST /preferences/{token}/erase",
            "GET /confirm/{token}",
            "GET /healthz",
            "GET /subscribe",
            "POST /confirm/{token}",
            "GET /unsubscribe/{token}",
            "POST /subscribe",
            "POST /unsubscribe/{token}",
            "POST /webhooks/sendgrid",
        ]
    )
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def never_5xx(case: Case) -> None:
            response = case.call()
            seen.setdefault(operation.label, set()).add(response.status_code)  # noqa: B023 (called at once, in this iteration)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        never_5xx()
    assert set(seen) == set(labels)  # every operation was exercised
    assert seen["POST /webhooks/sendgrid"] <= {400, 403, 413}  # unsigned: never accepted
