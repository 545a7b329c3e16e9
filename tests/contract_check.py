"""Every error answer a test sees must be in the published contract.

The ``client`` and ``live`` fixtures check each 4xx/5xx answer of an operation that
miniprogram_contracts/openapi.json describes: its status must be one the operation
documents, in a documented media type, and a JSON body must validate against the documented
schema (which names the error codes allowed for that status).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from miniprogram_contracts.generate import openapi_document


@lru_cache(maxsize=1)
def contract() -> dict[str, Any]:
    return dict(json.loads(openapi_document()))


@lru_cache(maxsize=1)
def _paths() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in contract()["paths"]:
        parts = re.split(r"(\{[^}]+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        found.append((re.compile(pattern), template))
    return found


def operation_of(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The documented operation answering ``method path``, with its path template."""
    for pattern, template in _paths():
        if pattern.fullmatch(path):
            operation = contract()["paths"][template].get(method.lower())
            return (template, operation) if operation else None
    return None


def problems(method: str, path: str, status: int, content_type: str, body: bytes) -> list[str]:
    """What is undocumented about an answer (nothing for a success or an unknown path)."""
    found = operation_of(method, path)
    if status < 400 or found is None:
        return []
    template, operation = found
    where = f"{method.upper()} {template} answered {status} {body[:300]!r}"
    response = operation["responses"].get(str(status))
    if response is None:
        return [f"{where}, but documents only {sorted(operation['responses'])}"]
    media = content_type.split(";")[0].strip()
    content = response.get("content", {})
    if media not in content:
        return [f"{where} as {media!r}, but documents {sorted(content)}"]
    schema = content[media].get("schema")
    if media != "application/json" or schema is None:
        return []
    validator = Draft202012Validator({**schema, "components": contract()["components"]})
    return [f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path)) or 'the top'}"
            for e in validator.iter_errors(json.loads(body))]


def check_response(response: httpx.Response) -> None:
    """An httpx response hook: fail the test on an undocumented error answer."""
    if response.status_code < 400:
        return
    response.read()
    found = problems(response.request.method, response.request.url.path, response.status_code,
                     response.headers.get("content-type", ""), response.content)
    assert not found, ("an answer the contract does not describe (document it with "
                       "backend.errors.errors(...) on the route, then regenerate "
                       "miniprogram_contracts):\n" + "\n".join(found))
