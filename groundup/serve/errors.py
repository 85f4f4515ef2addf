"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure:
our own checks, FastAPI's validation (its default is a 422 of another shape, which clients do
not read) and Starlette's 404/405."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from groundup.serve.schemas import SHAPES

# Union branch names pydantic puts into an error's location (("prompt", "list[int]", 0)).
_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


class APIError(Exception):
    """A request the server refuses; `status` 4xx for the client's mistakes."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _param(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content", "str") -> "messages.0.content"."""
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and _is_branch(p))]
    return ".".join(parts) or None


def _is_branch(name: str) -> bool:
    return "[" in name or name in _BRANCHES or name.startswith("function-")


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a body FastAPI could not validate, as one 400."""
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": ("body",), "type": "", "msg": "invalid body"}
    kind, param = first.get("type", ""), _param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return APIError(
            400,
            "the request body is not valid JSON; send one JSON object "
            f"({first.get('ctx', {}).get('error', 'parse error')})",
            code="invalid_json",
        )
    if param is None:
        return APIError(
            400,
            "the request body must be a JSON object of the request's fields, sent with "
            "Content-Type: application/json",
        )
    if kind == "missing":
        return APIError(400, f"'{param}' is a required field", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param)
    field = param.rsplit(".", 1)[-1]
    shown = repr(first.get("input"))[:80]
    in_union = any(isinstance(p, str) and _is_branch(p) for p in first.get("loc", ()))
    if field in SHAPES and in_union:
        return APIError(400, f"'{param}' must be {SHAPES[field]}, got {shown}", param)
    return APIError(400, f"'{param}': {first.get('msg', 'invalid')} (got {shown})", param)


def install_handlers(app: FastAPI) -> None:
    """Every error of the app answered in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        message = f"the server failed on this request ({type(exc).__name__}: {exc})"
        return JSONResponse(error_body(message, "server_error"), status_code=500)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += "; the API is under /v1 (models, completions, chat/completions)"
        return JSONResponse(error_body(message), status_code=exc.status_code)
