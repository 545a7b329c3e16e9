"""What operations use: JSON logs with the request id, /healthz, /readyz, /metrics."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend.config import Settings
from backend.logs import JsonFormatter, RedactingTextFormatter
from backend.migrate import head_revision
from backend.runtime import Runtime
from tests.servers import ServedApp

ID_NUMBER = "110101199003070011"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes, as ``serve`` writes it (JSON), captured."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _metric(body: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def test_every_request_gets_an_id_in_its_answer_and_its_json_access_line(
        served: ServedApp, json_lines: io.StringIO) -> None:
    # a path that holds a full ID number (no route has one; a scanner's might)
    r = httpx.get(f"{served.base_url}/api/v1/residents/{ID_NUMBER}/x")
    assert r.status_code in (404, 405)
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    access = [x for x in _records(json_lines) if x["logger"] == "backend.access"]
    line = next(x for x in access if x.get("request_id") == rid)
    assert line["status"] == r.status_code and line["method"] == "GET"
    assert line["route"] == "unmatched"       # never the raw path as a label
    assert ID_NUMBER not in json_lines.getvalue()
    assert line["path"] == "/api/v1/residents/110101********0011/x"
    assert isinstance(line["duration_ms"], float) and line["client"] == "127.0.0.1"
    assert str(line["time"]).endswith("Z")


def test_a_given_request_id_is_kept_and_a_strange_one_replaced(served: ServedApp) -> None:
    kept = httpx.get(f"{served.base_url}/healthz", headers={"X-Request-Id": "lb-7f3a.91"})
    assert kept.headers["x-request-id"] == "lb-7f3a.91"
    odd = httpx.get(f"{served.base_url}/healthz", headers={"X-Request-Id": "a b<script>"})
    assert re.fullmatch(r"[0-9a-f]{16}", odd.headers["x-request-id"])
    long = httpx.get(f"{served.base_url}/healthz", headers={"X-Request-Id": "x" * 65})
    assert long.headers["x-request-id"] != "x" * 65


def test_lines_logged_while_handling_a_request_carry_its_id(
        served: ServedApp, json_lines: io.StringIO) -> None:
    # a forged notification: the service logs a warning for it, in a thread
    r = httpx.post(f"{served.base_url}/api/v1/notify/wechat", content=b'{"id": "forged"}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code >= 400
    rid = r.headers["x-request-id"]
    warnings = [x for x in _records(json_lines)
                if x["level"] == "WARNING" and "rejected" in str(x["message"])]
    assert warnings and all(x.get("request_id") == rid for x in warnings)
    access = [x for x in _records(json_lines) if x["logger"] == "backend.access"]
    assert any(x["route"] == "/api/v1/notify/wechat" and x["request_id"] == rid
               for x in access)


def test_json_and_text_lines_mask_ids_phones_and_tracebacks() -> None:
    log = logging.getLogger("tests.ops.masking")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 1,
                            "resident %s phone %s", (ID_NUMBER, "13912345678"), None,
                            extra={"who": f"id {ID_NUMBER}"})
    try:
        raise ValueError(f"row {ID_NUMBER}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    text_line = RedactingTextFormatter("%(message)s").format(record)
    for rendered in (json.dumps(doc), text_line):
        assert ID_NUMBER not in rendered and "13912345678" not in rendered
    assert doc["message"] == "resident 110101********0011 phone 139****5678"
    assert doc["who"] == "id 110101********0011"
    assert "ValueError: row 110101********0011" in doc["exception"]


def test_healthz_is_the_process_alone(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_the_database_and_its_migrations(rt: Runtime, client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["migrations"] == "ok"
    # without REDIS_URL (SQLite here) the in-process store is all there is: ready, not degraded
    assert body["status"] == "ready" and body["checks"]["redis"].startswith("ok")
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0014'"))
    try:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not_ready"
        assert r.json()["checks"]["migrations"] == (
            f"the database is at 0014, the code needs {head_revision()}")
    finally:
        with rt.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"),
                         {"v": head_revision()})


def test_readyz_without_redis_is_degraded_not_down(settings: Settings) -> None:
    from backend.app import create_app

    closed = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    rt = Runtime(closed)
    try:
        with TestClient(create_app(runtime=rt)) as c:
            r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded"
        assert r.json()["checks"]["redis"].startswith("unreachable: ")
    finally:
        rt.close()


def test_readyz_without_the_database_is_not_ready(settings: Settings) -> None:
    from backend.app import create_app

    gone = settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    rt = Runtime(gone)
    try:
        # no lifespan: it would open the notification pool against the missing database
        c = TestClient(create_app(runtime=rt))
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"].startswith("unreachable: ")
        assert c.get("/healthz").status_code == 200
    finally:
        rt.close()


def test_metrics_only_for_the_allowed_addresses(client: TestClient) -> None:
    r = client.get("/metrics")   # TestClient's peer is "testclient", no address
    assert r.status_code == 403
    assert "METRICS_ALLOW" in r.json()["error"]["message"]


def test_metrics_count_requests_notifications_and_read_the_database(
        rt: Runtime, served: ServedApp) -> None:
    def scrape() -> str:
        r = httpx.get(f"{served.base_url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return r.text

    before = scrape()
    for _ in range(3):
        httpx.post(f"{served.base_url}/api/v1/notify/alipay", content=b"sign=forged",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    httpx.get(f"{served.base_url}/no/such/path")
    with rt.engine.begin() as conn:
        conn.execute(text("INSERT INTO outbox (kind, payload, status, run_at, tries, "
                          "created_at, updated_at) VALUES ('query_trade', '{}', 'dead', "
                          ":t, 9, :t, :t)"), {"t": "2020-01-01 00:00:00+00:00"})
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("collect_notifications_total", channel="alipay", outcome="rejected") == 3
    assert delta("collect_http_requests_total", method="POST",
                 route="/api/v1/notify/alipay", status="200") + delta(
        "collect_http_requests_total", method="POST", route="/api/v1/notify/alipay",
        status="400") == 3
    assert delta("collect_http_requests_total", method="GET", route="unmatched",
                 status="404") == 1
    assert delta("collect_http_request_duration_seconds_count", method="POST",
                 route="/api/v1/notify/alipay") == 3
    assert _metric(after, "collect_database_up") == 1
    assert _metric(after, "collect_outbox_dead_jobs") == 1 + _metric(
        before, "collect_outbox_dead_jobs")
    assert "collect_outbox_oldest_due_age_seconds" in after
    assert "# TYPE collect_reconciliation_discrepancies_open gauge" in after
    assert "# TYPE collect_anomalies_total counter" in after


def test_anomalies_a_worker_found_are_counted_at_the_scrape(
        rt: Runtime, served: ServedApp) -> None:
    """The worker's active query records an anomaly in its own process, whose counters no
    scrape reads: the count comes from the inbox, so serve's /metrics tells it."""
    from backend.db import unit_of_work
    from backend.notifications.models import InboxNotification

    def scrape(kind: str) -> float:
        body = httpx.get(f"{served.base_url}/metrics").text
        return _metric(body, "collect_anomalies_total", kind=kind)

    assert scrape("amount_mismatch") == 0 and scrape("shared_transaction") == 0
    with unit_of_work(rt.sessions) as s:     # as record_anomaly writes it, elsewhere
        for outcome in ("amount_mismatch", "amount_mismatch", "shared_transaction",
                        "rejected", "applied"):
            s.add(InboxNotification(channel="wechat", out_trade_no="T1", verified=True,
                                    outcome=outcome, detail="", headers={}, body="{}"))
    assert scrape("amount_mismatch") == 2 and scrape("shared_transaction") == 1
    assert scrape("transaction_conflict") == 0


def test_an_unexpected_error_is_logged_with_the_request_id_and_answered_500(
        served: ServedApp, json_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.ops

    def broken(rt: Runtime) -> dict[str, str]:
        raise RuntimeError(f"a defect while reading {ID_NUMBER}")

    monkeypatch.setattr(backend.ops, "_readiness", broken)
    r = httpx.get(f"{served.base_url}/readyz")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error",
                                  "message": "an unexpected error; it has been logged"}}
    rid = r.headers["x-request-id"]
    errors = [x for x in _records(json_lines) if x["level"] == "ERROR"]
    assert [x["message"] for x in errors] == ["unhandled error"]
    assert errors[0]["request_id"] == rid
    assert "RuntimeError: a defect while reading 110101********0011" in errors[0]["exception"]
    access = next(x for x in _records(json_lines) if x["logger"] == "backend.access")
    assert access["status"] == 500 and access["request_id"] == rid


def test_a_scanners_methods_and_paths_make_no_new_series(served: ServedApp) -> None:
    for i in range(5):
        httpx.request("PROPFIND" if i % 2 else "GET", f"{served.base_url}/wp-admin/{i}.php")
    body = httpx.get(f"{served.base_url}/metrics").text
    routes = {m.group(1) for m in re.finditer(r'route="([^"]*)"', body)}
    assert not any("wp-admin" in r for r in routes)
    assert "PROPFIND" not in body
    assert _metric(body, "collect_http_requests_total", method="other", route="unmatched",
                   status="405") + _metric(body, "collect_http_requests_total", method="other",
                                           route="unmatched", status="404") >= 2


def test_a_lookup_through_its_lane_is_counted_and_logged_with_its_id(
        served: ServedApp, json_lines: io.StringIO) -> None:
    from datetime import date

    from backend.residents.idnumber import make_id_number

    login = httpx.post(f"{served.base_url}/api/v1/auth/wechat",
                       json={"code": "sandbox:ops-prober"})
    assert login.status_code == 200, login.text
    nobody = make_id_number("370406", date(1969, 3, 15), 99)
    r = httpx.post(f"{served.base_url}/api/v1/residents/lookup",
                   headers={"Authorization": f"Bearer {login.json()['access_token']}"},
                   json={"name": "某某", "id_number": nobody, "year": 2021})
    assert r.status_code == 404
    rid = r.headers["x-request-id"]
    records = _records(json_lines)
    miss = [x for x in records if x["message"] == "lookup miss by resident"]
    assert [x.get("request_id") for x in miss] == [rid]   # logged in a lookup thread
    access = [x for x in records if x["logger"] == "backend.access"
              and x.get("request_id") == rid]
    assert access and access[0]["route"] == "/api/v1/residents/lookup"
    assert nobody not in json_lines.getvalue()
