"""Errors carry their HTTP status and the API's error code."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        err.update(self.extra)
        return {"error": err}


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
