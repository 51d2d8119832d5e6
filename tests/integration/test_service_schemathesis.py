"""Schemathesis against the service's own OpenAPI schema, over a real socket on the real engine:
valid and invalid data, JSON and multipart bodies, every operation; nothing it sends gets a 5xx.

(Schemathesis' pytest plugin does not run under this pytest version, so each operation's Hypothesis
strategy is driven directly; examples are bounded so the whole file stays around a minute.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

OPERATIONS = [
    ("POST", "/v1/score", "application/json"),
    ("POST", "/v1/score", "multipart/form-data"),
    ("POST", "/v1/score/batch", "application/json"),
    ("GET", "/v1/models", None),
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
]
MAX_EXAMPLES = {"/v1/score": 30, "/v1/score/batch": 15}


@pytest.fixture(scope="module")
def api_schema(live_server: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")


def test_schema_lists_every_operation(api_schema: Any) -> None:
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert {(m, p) for m, p, _ in OPERATIONS} == listed


CASES = [
    (method, path, media_type, mode)
    for method, path, media_type in OPERATIONS
    # operations without parameters or body have nothing to make invalid
    for mode in ((GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if method == "POST" else (GenerationMode.POSITIVE,))
]


@pytest.mark.parametrize(("method", "path", "media_type", "mode"), CASES, ids=lambda v: str(v))
def test_no_server_errors(api_schema: Any, live_server: str, method: str, path: str, media_type: str | None, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(mode, media_type=media_type) if media_type else operation.as_strategy(mode)
    calls = {"n": 0, "statuses": set()}

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES.get(path, 10), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=live_server, checks=[not_a_server_error], timeout=120)
        calls["n"] += 1
        calls["statuses"].add(response.status_code)

    run()
    assert calls["n"] > 0
    assert all(s < 500 for s in calls["statuses"]), calls
