"""``/r/report``: anyone checks a paper receipt (收据) an agent gave them; one the service does
not know, or knows with another amount, is recorded as a report for the town and auditors.

``GET`` is the form (HTML). ``POST`` takes JSON (``ReceiptReportIn``, answered in JSON) or the
page's form (``application/x-www-form-urlencoded``, amount in yuan, answered with a page).
No login; rate-limited per client address across processes (RECEIPT_REPORTS_PER_HOUR).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from backend import money
from backend.db import unit_of_work
from backend.deps import ClientIp, RuntimeDep
from backend.errors import AppError, ValidationFailed, errors
from backend.receipts import report_page, reports
from backend.receipts.page import HEADERS
from backend.receipts.report_schemas import (
    ReceiptKnownOut,
    ReceiptReportForm,
    ReceiptReportIn,
    ReceiptReportOut,
)
from backend.runtime import Runtime

router = APIRouter(tags=["receipt check"])
FORM = "application/x-www-form-urlencoded"
#: a report is a few short fields and a note of 500 characters
MAX_BODY_BYTES = 16 * 1024
FORM_FIELDS = ("village_code", "paper_receipt_no", "amount_yuan", "paid_on", "note")
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _schema(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return dict(schema)


def _refused(exc: ValidationError, rename: dict[str, str] | None = None) -> ValidationFailed:
    """pydantic's complaints as the API's ``validation_error``, each naming its field."""
    names = rename or {}
    fields, problems = [], []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "body"
        where = names.get(where, where)
        fields.append(where)
        problems.append(f"{where}: {e['msg']}")
    return ValidationFailed("; ".join(problems), fields=list(dict.fromkeys(fields)))


def _villages(rt: Runtime) -> list[report_page.TownOption]:
    with unit_of_work(rt.sessions) as s:
        return report_page.villages(s)


@router.get("/r/report", response_class=HTMLResponse,
            responses={200: {"description": "the form, in Chinese, for a phone's browser",
                             "content": _HTML}})
async def report_form(rt: RuntimeDep, village: str | None = None) -> HTMLResponse:
    """The form a resident checks a paper receipt with (no login): the village (picked from
    the district's list; `village` preselects one), the receipt's number, the amount in yuan,
    the day paid and a note. It posts to `POST /r/report`."""
    towns = await run_in_threadpool(_villages, rt)
    html = report_page.form(towns, rt.clock.today(), rt.settings.receipt_reports_per_hour,
                            values={"village_code": village or ""})
    return HTMLResponse(html, headers=HEADERS)


_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors("validation_error", "payload_too_large", "rate_limited"),
    200: {"model": ReceiptKnownOut,
          "description": "Known in that village for that amount: nothing recorded. (The "
                         "form's post: a page saying so.)",
          "content": {"application/json": {}, **_HTML}},
    201: {"description": "Recorded as a report (or the same report, open already: "
                         "`repeat`). (The form's post: a page with the report's number.)",
          "content": {"application/json": {}, **_HTML}},
}
for _status in (422, 429):
    _POST_RESPONSES[_status]["content"].update(_HTML)
_POST_RESPONSES[429]["headers"] = {"Retry-After": {
    "description": "seconds until the address may report again", "schema": {"type": "integer"}}}


@router.post("/r/report", status_code=201, response_model=ReceiptReportOut,
             responses=_POST_RESPONSES, openapi_extra={"requestBody": {
                 "required": True, "content": {
                     "application/json": {"schema": _schema(ReceiptReportIn)},
                     FORM: {"schema": _schema(ReceiptReportForm)}}}})
async def report(request: Request, rt: RuntimeDep, client_ip: ClientIp) -> Response:
    """Check a paper receipt against the agents' collections of its village (no login).

    - Unknown there: recorded, 201 `{"recorded": true, "kind": "unknown_receipt", "status":
      "open", "report_no", ...}`; it becomes `matched` when an agent of the village records
      that receipt number for the amount later.
    - Known with another amount: recorded, 201, `kind` `amount_differs` (the recorded amount
      is not told).
    - Known with that amount: nothing recorded, 200 `{"recorded": false, "known": true,
      "matches": true, "recorded_on", "amount_fen"}` — nothing about who paid.

    An unknown village, a day after today or more than 3 years ago, an amount not above 0 or
    over 100,000 yuan, a receipt number not printable or over 64 characters: 422 naming the
    field, nothing written. More than RECEIPT_REPORTS_PER_HOUR reports from one address in an
    hour: 429 with `Retry-After`. The form's post (`amount_yuan` in yuan) is answered with a
    page in Chinese, with the same statuses.
    """
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise AppError(f"the request body is over {MAX_BODY_BYTES} bytes",
                       code="payload_too_large", status=413)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == FORM:
        return await _form_post(rt, raw, client_ip)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed("body: not valid JSON (send application/json, or the form as "
                               f"{FORM})", fields=["body"]) from None
    if not isinstance(data, dict):
        raise ValidationFailed("body: a JSON object is expected", fields=["body"])
    try:
        body = ReceiptReportIn.model_validate(data)
    except ValidationError as exc:
        raise _refused(exc) from None
    result = await run_in_threadpool(reports.report, rt, body, client_ip)
    status = 201 if isinstance(result, ReceiptReportOut) else 200
    return JSONResponse(result.model_dump(mode="json"), status_code=status,
                        headers={"Cache-Control": "no-store"})


def _form_values(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed("body: not a valid form (UTF-8, at most 20 fields)",
                               fields=["body"]) from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in FORM_FIELDS:
            values[name] = value        # a repeated field: the last one, as a browser sends it
    return values


async def _form_post(rt: Runtime, raw: bytes, client_ip: str) -> Response:
    values: dict[str, str] = {}
    try:
        values = _form_values(raw)
        result = await run_in_threadpool(_check_form, rt, values, client_ip)
    except AppError as exc:
        if exc.code == "rate_limited":
            wait = int(exc.headers.get("Retry-After", reports.WINDOW_S))
            html = report_page.limited(rt.settings.receipt_reports_per_hour, wait)
        elif exc.code == "validation_error":
            towns = await run_in_threadpool(_villages, rt)
            html = report_page.form(towns, rt.clock.today(),
                                    rt.settings.receipt_reports_per_hour, values=values,
                                    errors=exc.extra.get("fields") or ["body"])
        else:
            raise
        return HTMLResponse(html, status_code=exc.status, headers={**HEADERS, **exc.headers})
    status = 201 if isinstance(result, ReceiptReportOut) else 200
    return HTMLResponse(report_page.outcome(result), status_code=status, headers=HEADERS)


def _check_form(rt: Runtime, values: dict[str, str],
                client_ip: str) -> ReceiptReportOut | ReceiptKnownOut:
    """The form's fields as a report: every field that is wrong named at once."""
    data: dict[str, Any] = {k: values.get(k, "") for k in ("village_code", "paper_receipt_no",
                                                           "paid_on")}
    data["note"] = values.get("note") or None
    wrong: list[str] = []
    try:
        data["amount_fen"] = money.parse_yuan(values.get("amount_yuan", ""))
    except ValueError:
        wrong.append("amount_yuan")
        data["amount_fen"] = 1          # checked no further: the field is wrong already
    if not data["paid_on"]:
        wrong.append("paid_on")
        data["paid_on"] = "2000-01-01"
    try:
        body = ReceiptReportIn.model_validate(data)
    except ValidationError as exc:
        refused = _refused(exc, rename={"amount_fen": "amount_yuan"})
        fields = list(dict.fromkeys(wrong + refused.extra["fields"]))
        raise ValidationFailed(refused.message, fields=fields) from None
    if wrong:
        raise ValidationFailed(f"{', '.join(wrong)}: missing or not valid", fields=wrong)
    return reports.report(rt, body, client_ip)
