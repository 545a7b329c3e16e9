"""The mini-program's contract: openapi.json is current, and the example payloads in
miniprogram_contracts/examples/ are real answers of this service (regenerate both with
``UPDATE_CONTRACTS=1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from miniprogram_contracts.generate import HERE, openapi_document
from tests.conftest import Live
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
    assert Path(EXAMPLES).is_dir()
