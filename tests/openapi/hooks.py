"""Schemathesis hooks for the gateway's API contract test (tests/openapi.rs).

- `refused_changes_nothing`: a request the gateway refuses (any 4xx or 5xx)
  publishes nothing (`/health` lastSeq unchanged) and revokes nothing (the
  revocation list unchanged).
- `before_call`: a revocation's `until` must lie in the future, which a
  static schema cannot say; a case drawn with a past time gets a future one.
"""

import json
import math
import os
import time
import urllib.request

import schemathesis

GATEWAY = os.environ["SMARTWAIT_GATEWAY_URL"]
TOKEN = os.environ["SMARTWAIT_SERVICE_TOKEN"]

_before = {}


def _get(path):
    request = urllib.request.Request(GATEWAY + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _state():
    return _get("/health")["lastSeq"], _get("/api/tokens/revoked")["revoked"]


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # Here rather than in a map_body hook, which the coverage phase skips.
    if case.operation.path == "/api/tokens/revoke" and isinstance(case.body, dict):
        until = case.body.get("until")
        now = int(time.time())
        # A whole number, as JSON Schema counts them: 498 or 498.0.
        whole = type(until) in (int, float) and math.isfinite(until) and until == int(until)
        if whole and 1 <= until <= now + 5:
            case.body["until"] = now + 3600 + int(until) % 1000
    _before["state"] = _state()


@schemathesis.check
def refused_changes_nothing(ctx, response, case):
    if response.status_code < 400:
        return None
    before = _before.get("state")
    after = _state()
    if before is not None and after != before:
        raise AssertionError(
            f"a refused request ({response.status_code}) changed the box: "
            f"lastSeq/revocations {before} -> {after}"
        )
    return None
