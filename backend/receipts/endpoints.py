"""Receipts: the payer's and staff's (``/api/v1/receipts``), and anyone's check (``/r``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from backend import metrics
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, errors
from backend.receipts import page, service
from backend.receipts.schemas import ReceiptCheckOut, ReceiptOut, check_out, receipt_out

router = APIRouter(tags=["receipts"])
RENDER_ERRORS = (*LOGGED_IN, "not_found", "pdf_font_unavailable")
#: /r/… paths that are pages of their own, never a token (/r/report: reporting a paper
#: receipt the service does not know).
RESERVED = ("public-key", "report")


class ReceiptToken(Convertor[str]):
    """A ``/r/<token>`` path segment: anything but the reserved names, so that their routes
    are never taken for a token, whatever order the routers are included in."""

    regex = r"(?!(?:" + "|".join(RESERVED) + r")$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("receipt_token", ReceiptToken())


def _file(content: bytes, media_type: str, receipt_no: str, suffix: str) -> Response:
    return Response(content, media_type=media_type, headers={
        "Content-Disposition": f'inline; filename="{receipt_no}.{suffix}"',
        "Cache-Control": "private, no-store"})


@router.get("/api/v1/receipts/{receipt_no}.pdf", response_class=Response, responses={
    200: {"description": "the receipt as a PDF, 58 mm wide (an agent's portable printer)",
          "content": {"application/pdf": {}}}, **errors(*RENDER_ERRORS)})
def receipt_pdf(receipt_no: str, rt: RuntimeDep, session: SessionDep,
                principal: CurrentPrincipal) -> Response:
    view = service.receipt_for(rt, session, principal, receipt_no)
    from backend.receipts.render import render_pdf

    return _file(render_pdf(view, font_path=rt.settings.pdf_font_path), "application/pdf",
                 receipt_no, "pdf")


@router.get("/api/v1/receipts/{receipt_no}.png", response_class=Response, responses={
    200: {"description": "the receipt as a PNG, 58 mm wide, with its QR code",
          "content": {"image/png": {}}}, **errors(*RENDER_ERRORS)})
def receipt_png(receipt_no: str, rt: RuntimeDep, session: SessionDep,
                principal: CurrentPrincipal) -> Response:
    view = service.receipt_for(rt, session, principal, receipt_no)
    from backend.receipts.render import render_png

    return _file(render_png(view, font_path=rt.settings.pdf_font_path), "image/png",
                 receipt_no, "png")


@router.get("/api/v1/receipts/{receipt_no}", response_model=ReceiptOut,
            responses=errors(*LOGGED_IN, "not_found"))
def get_receipt(receipt_no: str, rt: RuntimeDep, session: SessionDep,
                principal: CurrentPrincipal) -> ReceiptOut:
    """The payer's receipt (缴费凭证), or one in a staff member's scope: finance, auditors
    and admins any; town staff their town's; an agent their village's; a department its
    bills'. Any other number answers 404, the same as one that does not exist."""
    return receipt_out(service.receipt_for(rt, session, principal, receipt_no))


@router.get("/r/public-key", tags=["receipt check"], response_class=PlainTextResponse,
            responses={200: {"description": "the Ed25519 public key receipts are signed "
                                            "with (SubjectPublicKeyInfo, PEM)",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def public_key(rt: RuntimeDep) -> PlainTextResponse:
    """For checking receipts offline: ``python -m backend receipts verify TOKEN
    --public-key FILE``."""
    return PlainTextResponse(service.public_pem(rt.receipt_key), headers={
        "Cache-Control": "public, max-age=3600",
        "Content-Disposition": 'inline; filename="receipt-public-key.pem"'})


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "text/html" not in accept


_CHECK_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "valid or not (200 either way): a page in Chinese for a phone's browser, "
                   "or with `Accept: application/json` the same as JSON",
    "content": {"text/html": {"schema": {"type": "string"}}}}}


@router.get("/r/{token:receipt_token}", tags=["receipt check"], response_model=ReceiptCheckOut,
            responses=_CHECK_RESPONSES)
async def check(token: str, request: Request, rt: RuntimeDep) -> Response:
    """What a receipt's QR code opens, no login: whether the token is a receipt this service
    issued, unchanged, with the masked payer, items, amount, date and what was refunded
    since. A changed or made-up token is "not valid" (and counted)."""
    view = await run_in_threadpool(service.check_online, rt, token)
    metrics.RECEIPT_CHECKS.labels(outcome="valid" if view is not None else "invalid").inc()
    if _wants_json(request):
        return JSONResponse(check_out(view).model_dump(mode="json"),
                            headers={"Cache-Control": "no-store", "Vary": "Accept"})
    return HTMLResponse(page.render(view), headers={**page.HEADERS, "Vary": "Accept"})
