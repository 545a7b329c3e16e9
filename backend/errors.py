"""Errors carry their HTTP status and the API's error code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.responses import JSONResponse


class AppError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        #: HTTP headers of the answer (a 429's Retry-After)
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        err.update(self.extra)
        return {"error": err}


def answer_error(exc: AppError) -> JSONResponse:
    """The answer to an ``AppError``: the app's exception handler's, and the lanes' (ASGI
    middleware that answer a path ahead of FastAPI) alike."""
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers or None)


class ValidationFailed(AppError):
    status, code = 422, "validation_error"


class InvalidIdNumber(AppError):
    status, code = 422, "invalid_id_number"


class NotFound(AppError):
    status, code = 404, "not_found"


class Unauthorized(AppError):
    status, code = 401, "unauthorized"


class Forbidden(AppError):
    status, code = 403, "forbidden"


class RateLimited(AppError):
    status, code = 429, "rate_limited"


class Conflict(AppError):
    status, code = 409, "conflict"


# --------------------------------------------------------------------------- the contract
# Every error answer is ``{"error": {"code", "message", ...}}``: one model, documented per
# operation with the codes it can answer (``errors(...)`` in each route's ``responses``).

def _absent_not_null(schema: dict[str, Any]) -> None:
    # The optional keys are left out of an answer, never sent as null.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None:
            del prop["default"]


class ErrorDetail(BaseModel):
    """What went wrong: ``code`` for the program, ``message`` for a person."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_absent_not_null)

    code: str = Field(description="Stable and machine-readable: one of the codes that the "
                                  "operation lists for this HTTP status.")
    message: str = Field(description="One sentence for a person, naming what was wrong. Its "
                                     "wording may change: branch on `code`, never on this.")
    fields: list[str] | SkipJsonSchema[None] = Field(
        None, description="`validation_error` of the request's shape: the fields that failed, "
                          "e.g. `items.0.tier_yuan`, `date`, or `body` for invalid JSON.")
    order_no: str | SkipJsonSchema[None] = Field(
        None, description="`channel_error`, `channel_timeout` after the order was written: "
                          "the order, to be read or synced later.")
    resident_ref: str | SkipJsonSchema[None] = Field(
        None, description="`item_already_paid`, `item_in_pending_order`: whose item.")
    insurance: Literal["pension", "medical"] | SkipJsonSchema[None] = Field(
        None, description="`item_already_paid`, `item_in_pending_order`: which item.")
    reason: str | SkipJsonSchema[None] = Field(
        None, description="`not_eligible`: why, e.g. `deceased`, `employee_pension`, "
                          "`employee_medical`, `under_16`, `over_59`, `student`, `not_born`, "
                          "`government_paid`, `tier_not_allowed`.")
    on_hand_fen: int | SkipJsonSchema[None] = Field(
        None, description="`remittance_exceeds_cash`: the cash of that day not yet remitted.")
    requested_fen: int | SkipJsonSchema[None] = Field(
        None, description="`refund_exceeds_refundable`: what the refund asked for.")
    refundable_fen: int | SkipJsonSchema[None] = Field(
        None, description="`refund_exceeds_refundable`: what remains refundable of it.")
    run_id: int | SkipJsonSchema[None] = Field(
        None, description="`statement_already_loaded`: the reconciliation run that has it.")
    line: int | SkipJsonSchema[None] = Field(
        None, description="`invalid_statement`: the line of the (decompressed) file.")
    outstanding_fen: int | SkipJsonSchema[None] = Field(
        None, description="`transfer_exceeds_outstanding`: what the bill still owes.")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer of the API (the channel notification endpoints
    answer in each channel's own format instead)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


@dataclass(frozen=True)
class ErrorCode:
    status: int
    meaning: str


#: Every code the API answers, its HTTP status and what it means for the caller.
ERROR_CODES: dict[str, ErrorCode] = {
    "validation_error": ErrorCode(422, "the request is malformed or names something that "
                                       "does not fit (a field, the year, a tier, a "
                                       "resident_ref, the Idempotency-Key); `message` says what"),
    "invalid_id_number": ErrorCode(422, "the ID number is not a valid 18-character resident "
                                        "ID: length, characters, checksum or birth date"),
    "unauthorized": ErrorCode(401, "no access token, an expired or invalid one, or a failed "
                                   "login: log in (again)"),
    "forbidden": ErrorCode(403, "the caller's role or scope does not allow this"),
    "wechat_login_blocked": ErrorCode(403, "WeChat refuses to log this user in (a high-risk "
                                           "account, errcode 40226)"),
    "wechat_unavailable": ErrorCode(503, "WeChat's login service did not answer or is busy: "
                                         "try the login again shortly (with a new wx.login "
                                         "code)"),
    "not_found": ErrorCode(404, "nothing of this kind that this caller may see"),
    "payload_too_large": ErrorCode(413, "the request body is over the size limit"),
    "rate_limited": ErrorCode(429, "too many failed lookups or logins, or receipt reports from "
                                   "one address: wait a few minutes (a report's answer says "
                                   "how long in `Retry-After`)"),
    "not_eligible": ErrorCode(409, "an item the resident can not pay (`reason` says why)"),
    "window_closed": ErrorCode(409, "the collection window is not open; back-payments (补缴) "
                                    "are made by staff"),
    "item_already_paid": ErrorCode(409, "an item is paid already (`resident_ref`, "
                                        "`insurance`)"),
    "item_in_pending_order": ErrorCode(409, "an item is in another payer's unpaid order "
                                            "(`resident_ref`, `insurance`); free again when "
                                            "that order expires"),
    "idempotency_conflict": ErrorCode(409, "the Idempotency-Key was used with another body, "
                                           "or its first request is still running: retry "
                                           "the same request shortly"),
    "order_not_payable": ErrorCode(409, "the order is not pending (paid, closed or "
                                        "refunded)"),
    "receipt_no_taken": ErrorCode(409, "this agent already recorded that receipt number"),
    "remittance_exceeds_cash": ErrorCode(409, "more than the cash of that day not yet "
                                              "remitted (`on_hand_fen`)"),
    "bank_receipt_taken": ErrorCode(409, "that bank receipt number is already recorded"),
    "invalid_statement": ErrorCode(422, "the statement file cannot be imported (a wrong "
                                        "header, a bad amount, a truncated or oversized "
                                        "archive, a line of another day): `message` and "
                                        "`line` say where; nothing of it was kept"),
    "statement_already_loaded": ErrorCode(409, "another file is already reconciled for that "
                                               "channel and day, or this file for another "
                                               "day (`run_id`)"),
    "discrepancy_not_open": ErrorCode(409, "the discrepancy is held for the next day's "
                                           "statement, or already settled"),
    "discrepancy_not_proposed": ErrorCode(409, "only a proposed resolution can be approved "
                                               "(none yet, or already approved)"),
    "same_approver": ErrorCode(403, "a second finance user, not the one who proposed it, "
                                    "approves a discrepancy's resolution or a refund (or "
                                    "rejects the refund)"),
    "cannot_recover": ErrorCode(409, "the correction the channel's side calls for cannot be "
                                     "made (e.g. the statement's amount is not the trade's): "
                                     "`message` says why"),
    "day_not_over": ErrorCode(409, "the business day is not over yet: a day is closed after "
                                   "it ends"),
    "day_closed": ErrorCode(409, "the business day is closed already"),
    "day_not_closed": ErrorCode(409, "the business day is not closed yet: finance closes it "
                                     "(after reconciliation) before its declaration is made"),
    "open_discrepancies": ErrorCode(409, "reconciliation discrepancies of the day are still "
                                         "open: resolve them before closing it"),
    "order_not_refundable": ErrorCode(409, "the order has no money received to refund (not "
                                           "paid), or not in one payment a refund can give "
                                           "back"),
    "refund_exceeds_refundable": ErrorCode(409, "the refund is more than what remains "
                                                "refundable (`requested_fen`, "
                                                "`refundable_fen`)"),
    "refund_not_pending": ErrorCode(409, "the refund is not in the state this step needs "
                                         "(e.g. approved already, or not awaiting cash)"),
    "receipt_report_not_open": ErrorCode(409, "the receipt report is not open: matched by "
                                              "the agent's collection, or closed already"),
    "statement_not_ready": ErrorCode(409, "the channel has not published that day's statement "
                                          "yet (WeChat: after 10:00 the next day), has none "
                                          "(no trade that day), or no longer serves it "
                                          "(older than 3 months): try later, or upload it"),
    "nothing_to_bill": ErrorCode(409, "the department's list has no one in that town and year "
                                      "who is not billed already (or excluded, for the "
                                      "reasons a bill lists)"),
    "transfer_exceeds_outstanding": ErrorCode(409, "the transfer is more than what the bill "
                                                   "still owes (`outstanding_fen`)"),
    "line_already_credited": ErrorCode(409, "a credit note already took that line off the "
                                            "bill"),
    "duplicate_bank_reference": ErrorCode(409, "a transfer with this bank reference is "
                                               "recorded already"),
    "publication_unchanged": ErrorCode(409, "nothing changed since the list's latest "
                                            "published version: no new version is recorded"),
    "publication_version_taken": ErrorCode(409, "another version of that list was published "
                                                "at the same moment: read the versions and "
                                                "retry"),
    "pdf_font_unavailable": ErrorCode(503, "the CJK font the PDF embeds is not installed on "
                                           "the server (PDF_FONT_PATH, Debian's "
                                           "fonts-wqy-microhei): the XLSX is available"),
    "channel_error": ErrorCode(502, "the payment channel refused or failed; `order_no` names "
                                    "the order when one was written"),
    "declaration_mismatch": ErrorCode(500, "the declaration does not agree with the ledger "
                                           "for that town and day: nothing was served; the "
                                           "difference is logged for finance and IT"),
    "internal_error": ErrorCode(500, "an unexpected error, logged on the server: retry later"),
    "channel_timeout": ErrorCode(504, "the payment channel did not answer in time; the order "
                                      "(`order_no`) stays pending and is checked with the "
                                      "channel: read or sync it, do not pay twice"),
}

ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"

#: Codes that many operations share.
LOGGED_IN = ("unauthorized",)
# The largest row id a path or query parameter may name: an id column's range (larger ones
# would overflow the database's integer, a 500, instead of being refused with a 422).
MAX_ID = 2**31 - 1
JSON_BODY = ("validation_error", "payload_too_large")


def errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each status it can answer, with its codes.

    Each status is documented as ``ErrorResponse`` with ``error.code`` narrowed to the codes
    listed, so the generated TypeScript types know them.
    """
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(ERROR_CODES[code].status, []).append(code)
    return {status: error_response(found) for status, found in sorted(by_status.items())}


def error_response(codes: list[str], description: str | None = None) -> dict[str, Any]:
    lines = [f"- `{c}`: {ERROR_CODES[c].meaning}" for c in codes]
    return {
        "description": description or "\n".join(lines),
        "content": {"application/json": {"schema": {
            "allOf": [{"$ref": ERROR_SCHEMA_REF}],
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code"],
                                     "properties": {"code": {"type": "string", "enum": codes}}}},
        }}},
    }


def document_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Finish FastAPI's description: ``ErrorResponse`` in the components, FastAPI's own 422
    (``HTTPValidationError``, a shape this API never answers) gone from every operation."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema([(ErrorResponse, "validation")],
                                ref_template="#/components/schemas/{model}")
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(top["$defs"])
    fastapi_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            for status, response in list(responses.items()):
                if response.get("content", {}).get("application/json", {}).get(
                        "schema") == fastapi_422:
                    del responses[status]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return openapi
