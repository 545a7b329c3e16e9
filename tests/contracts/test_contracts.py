"""The mini-program's contract: openapi.json is current, and the example payloads in
miniprogram_contracts/examples/ are real answers of this service (regenerate both with
``UPDATE_CONTRACTS=1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from miniprogram_contracts.generate import HERE, openapi_document
from tests.conftest import HANG_S, Live
from tests.contract_check import contract, problems
from tests.orders.helpers import order, ref, resident_headers, seed

UPDATE = os.environ.get("UPDATE_CONTRACTS") == "1"
EXAMPLES = HERE / "examples"


def test_openapi_json_is_current() -> None:
    current = openapi_document()
    path = HERE / "openapi.json"
    if UPDATE:
        path.write_text(current)
    assert json.loads(path.read_text()) == json.loads(current), (
        "miniprogram_contracts/openapi.json is stale: run "
        "`.venv/bin/python miniprogram_contracts/generate.py`")


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _example(name: str, payload: Any) -> None:
    path = EXAMPLES / f"{name}.json"
    if UPDATE:
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    stored = json.loads(path.read_text())
    assert _shape(stored) == _shape(payload), f"{path.name} no longer matches the answer"


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_example_payloads_match_real_answers(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    login = live.http.post("/api/v1/auth/wechat", json={"code": "sandbox:demo"}).json()
    login["access_token"] = "<token>"
    _example("auth_wechat.response", login)
    request = {"name": "张三", "id_number": "370406196903150116", "year": 2021}
    _example("residents_lookup.request", request)
    lookup = live.http.post("/api/v1/residents/lookup", headers=h, json={
        **request, "id_number": people["张三"]}).json()
    _example("residents_lookup.response", lookup)
    zhang = ref(live, h, "张三", people["张三"])
    body = {"year": 2021, "channel": "wechat_jsapi",
            "items": [{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300},
                      {"resident_ref": zhang, "insurance": "medical"}]}
    _example("orders_create_wechat_jsapi.request", body)
    _example("orders_create_wechat_jsapi.response",
             order(live, h, "wechat_jsapi", body["items"]).json())
    li = ref(live, h, "李梅", people["李梅"])
    _example("orders_create_alipay_qr.response",
             order(live, h, "alipay_qr", [{"resident_ref": li, "insurance": "medical"}]).json())
    _example("error.item_in_pending_order", order(
        live, resident_headers(live, "other"), "alipay_qr",
        [{"resident_ref": ref(live, resident_headers(live, "other"), "李梅", people["李梅"]),
          "insurance": "medical"}]).json())
    stored = (EXAMPLES / "error.item_in_pending_order.json").read_bytes()
    assert problems("POST", "/api/v1/orders", 409, "application/json", stored) == []
    assert Path(EXAMPLES).is_dir()


# --------------------------------------------------------------------------- error answers
def _documented(r: httpx.Response) -> list[str]:
    return problems(r.request.method, r.request.url.path, r.status_code,
                    r.headers.get("content-type", ""), r.content)


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_real_error_answers_validate_against_the_documented_responses(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    raw = httpx.Client(base_url=live.base_url, timeout=30)   # no checking hook: we check here
    zhang = ref(live, h, "张三", people["张三"])
    medical = [{"resident_ref": zhang, "insurance": "medical"}]
    taken = order(live, resident_headers(live, "other"), "alipay_qr", [{
        "resident_ref": ref(live, resident_headers(live, "other"), "李梅", people["李梅"]),
        "insurance": "medical"}]).json()
    mei = ref(live, h, "李梅", people["李梅"])
    answers = {
        (422, "validation_error"): raw.post("/api/v1/orders", headers=h, json={"year": "x"}),
        (422, "invalid_id_number"): raw.post("/api/v1/residents/lookup", headers=h, json={
            "name": "张三", "id_number": people["张三"][:17] + "0", "year": 2021}),
        (401, "unauthorized"): raw.get("/api/v1/orders/NOPE"),
        (403, "forbidden"): raw.get("/api/v1/ledger/daily?date=2020-11-02", headers=h),
        (404, "not_found"): raw.get("/api/v1/orders/NOPE", headers=h),
        (409, "item_in_pending_order"): raw.post("/api/v1/orders", headers=h, json={
            "year": 2021, "channel": "alipay_qr",
            "items": [{"resident_ref": mei, "insurance": "medical"}]}),
        (413, "payload_too_large"): raw.post("/api/v1/auth/wechat", content=b"x" * (2 << 20),
                                             headers={"content-type": "application/json"}),
    }
    first = raw.post("/api/v1/orders", headers={**h, "Idempotency-Key": "k-1"}, json={
        "year": 2021, "channel": "alipay_qr", "items": medical})
    assert first.status_code == 201, first.text
    answers[409, "idempotency_conflict"] = raw.post(
        "/api/v1/orders", headers={**h, "Idempotency-Key": "k-1"},
        json={"year": 2021, "channel": "unionpay_qr", "items": medical})
    # ChinaUMS refuses the trade outright: a 502, and the order is closed
    live.http.post("/sandbox/faults", json={"channel": "unionpay",
                                            "answer_error": "OPERATION_NOT_ALLOWED"})
    answers[502, "channel_error"] = raw.post("/api/v1/orders", headers=h, json={
        "year": 2021, "channel": "unionpay_qr",
        "items": [{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300}]})
    live.http.post("/sandbox/faults", json={"channel": "unionpay", "answer_error": ""})
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": True, "hang_s": HANG_S})
    answers[504, "channel_timeout"] = raw.post("/api/v1/orders", headers=h, json={
        "year": 2021, "channel": "alipay_qr",
        "items": [{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300}]})
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": False})
    for _ in range(live.rt.settings.lookup_miss_limit + 1):
        miss = raw.post("/api/v1/residents/lookup", headers=h, json={
            "name": "无此人", "id_number": people["张三"], "year": 2021})
    answers[429, "rate_limited"] = miss

    for (status, code), r in answers.items():
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert _documented(r) == [], f"{status} {code}"
    assert answers[422, "validation_error"].json()["error"]["fields"]
    assert answers[409, "item_in_pending_order"].json()["error"]["resident_ref"] == mei
    assert answers[504, "channel_timeout"].json()["error"]["order_no"]
    assert taken["status"] == "pending"


def test_the_checker_refuses_what_the_contract_does_not_say() -> None:
    fastapi_422 = json.dumps({"detail": [{"loc": ["body", "year"], "msg": "bad",
                                          "type": "int_parsing"}]}).encode()
    assert problems("POST", "/api/v1/orders", 422, "application/json", fastapi_422)

    def error(code: str, **extra: object) -> bytes:
        return json.dumps({"error": {"code": code, "message": "m", **extra}}).encode()

    # a code that this status of this operation does not list
    assert problems("POST", "/api/v1/orders", 409, "application/json",
                    error("order_not_payable"))
    # a status that the operation does not document
    assert problems("POST", "/api/v1/orders/X/sync", 409, "application/json",
                    error("order_not_payable"))
    # a key the error model does not have
    assert problems("POST", "/api/v1/orders", 409, "application/json",
                    error("not_eligible", surprise=1))
    assert problems("POST", "/api/v1/orders", 409, "application/json",
                    error("not_eligible", reason="deceased")) == []


def test_every_operation_documents_its_common_errors() -> None:
    from backend.errors import ERROR_CODES, ERROR_SCHEMA_REF

    doc = contract()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert "ErrorResponse" in schemas and "ErrorDetail" in schemas
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where, responses = f"{method.upper()} {path}", op["responses"]
            if op.get("security"):
                assert "401" in responses, where
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert {"413", "422"} <= set(responses), where
            for status, response in responses.items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                # WeChat reads its own failure answer; readiness answers its checks (503 too)
                if int(status) >= 400 and schema and path not in (
                        "/api/v1/notify/wechat", "/readyz"):
                    assert schema["allOf"] == [{"$ref": ERROR_SCHEMA_REF}], (where, status)
                    codes = schema["properties"]["error"]["properties"]["code"]["enum"]
                    assert {ERROR_CODES[c].status for c in codes} == {int(status)}, where


def test_typescript_types_are_generated_from_this_openapi_json() -> None:
    """api.d.ts is made by openapi-typescript (see generate.py); it must hold every
    operation and every error code that openapi.json documents."""
    types = (HERE / "api.d.ts").read_text()
    doc = json.loads((HERE / "openapi.json").read_text())
    assert "HTTPValidationError" not in types and "ErrorResponse" in types
    for item in doc["paths"].values():
        for op in item.values():
            assert f"{op['operationId']}:" in types, op["operationId"]
            for response in op["responses"].values():
                schema = response.get("content", {}).get("application/json", {}).get(
                    "schema", {})
                for code in schema.get("properties", {}).get("error", {}).get(
                        "properties", {}).get("code", {}).get("enum", []):
                    assert f'"{code}"' in types, code
