"""Errors in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`, and the handlers that turn every
failure into one: validation problems are 400 with `param` set (never 5xx, which the OpenAI client retries),
overload is 429 with `Retry-After`, a draining server answers 503.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

from neurallayers.serve import schemas

log = logging.getLogger("neurallayers.serve")

# Union fields whose pydantic errors (one per union member) collapse into one message naming what is allowed.
UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "input": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a non-empty string or a list of at most 16 non-empty strings",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} (or {\"type\": \"refusal\", \"refusal\": "
               "...}) parts",
}
# pydantic writes union members and wrappers into `loc`; they are not field names
_TYPE_TAG_CHARS = "[]-"
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}
# a text with a lone surrogate: schemas.Text's check, or pydantic's own where a length constraint reads the text first
_NOT_UNICODE = {"lone_surrogate", "string_unicode"}


class APIError(Exception):
    """An error the client should see as `status` with an OpenAI error body.

    Args:
        status: the HTTP status.
        message: what went wrong and how to fix it.
        type: the OpenAI error type ("invalid_request_error", "authentication_error", ...).
        param: the request field at fault, if any.
        code: a short machine-readable code, if any.
        headers: extra response headers (Retry-After).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error naming the field at fault."""
    return APIError(400, message, param=param, code=code)


def overloaded(retry_after: float) -> APIError:
    """429 with Retry-After in whole seconds (HTTP allows no fractions), at least 1."""
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 1
    return APIError(429, f"the server is at capacity (running and queued requests); retry in {seconds} s",
                    type="rate_limit_error", code="server_busy", headers={"Retry-After": str(seconds)})


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="service_unavailable", code="service_unavailable",
                    headers={"Retry-After": "1"})


def param_of(loc: tuple | list) -> str | None:
    """A pydantic error location ("body", "messages", 0, "content", "str") -> "messages[0].content"."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    if not parts or not isinstance(parts[0], str):
        return "body" if loc and loc[0] == "body" else None
    param = parts[0]
    for p in parts[1:]:
        if isinstance(p, int):
            param += f"[{p}]"
        elif p.lower() in _TYPE_TAGS or any(c in p for c in _TYPE_TAG_CHARS):
            break  # a union member tag: what follows belongs to that member's attempt
        else:
            param += f".{p}"
    return param


def unknown_field(param: str) -> str:
    """The message for a field no request schema has: an OpenAI one this server lacks, or (likely) a typo."""
    if param.rpartition(".")[2] in schemas.UNSUPPORTED:  # a message's tool_call_id too
        return f"{param}: not supported by this server (send null or leave it out)"
    known = {name for model in vars(schemas).values() if isinstance(model, type)
             and issubclass(model, schemas.Strict) for name in model.model_fields}
    if param in known:
        return f"{param}: not a field of this route (another route takes it)"
    close = difflib.get_close_matches(param.rpartition(".")[2], sorted(known), n=1)  # a nested field's own name
    return f"{param}: unknown field" + (f" (did you mean {close[0]!r}?)" if close else " (check the spelling)")


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for a list of pydantic errors: the first field at fault, said plainly."""
    # a lone surrogate fails one member of a union and the others by type: the surrogate is what to report
    first = next((e for e in errors if e.get("type") in _NOT_UNICODE), errors[0])
    loc = tuple(first.get("loc", ()))
    param = param_of(loc)
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", "body"
    if param == "body":
        if first.get("type") == "missing":
            return "the request body is missing: send a JSON object", "body"
        return f"the request body must be a JSON object: {first.get('msg')}", "body"
    if first.get("type") == "extra_forbidden":
        return unknown_field(param), param
    if first.get("type") == "missing":
        return f"{param}: field required", param
    if first.get("type") in _NOT_UNICODE:
        return f"{param}: {first.get('msg')}", param
    leaf = param.rsplit(".", 1)[-1].split("[", 1)[0] if param else ""
    tagged = len(errors) > 1 and all(param_of(e.get("loc", ())) == param for e in errors)
    if tagged and leaf in UNION_HINTS:
        return f"{param} must be {UNION_HINTS[leaf]}", param
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r:.80})"
    return f"{param}: {first.get('msg')}{shown}", param


def content_type_hint(content_type: str | None) -> str | None:
    """The message for a body FastAPI did not read because its Content-Type is not JSON (`curl -d` sends a form, some
    clients send none): the body itself may be a fine JSON object, so "not a JSON object" would mislead. None for a
    JSON type."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    got = f"got {media!r}" if media else "no Content-Type header"
    return f"the request body must be JSON sent with 'Content-Type: application/json' ({got})"


def unparsed_body(encoding: str | None, cause: BaseException | None) -> str | None:
    """Why FastAPI could not parse a body, for its bare "There was an error parsing the body": a compressed body (it
    is not decompressed), bytes that are not UTF-8, JSON nested too deep; None when there is nothing to add."""
    if encoding and encoding.strip().lower() != "identity":
        return f"Content-Encoding {encoding.strip()!r} is not supported: send the JSON body uncompressed"
    if cause is None:
        return None
    return f"the request body could not be read as JSON: {type(cause).__name__}: {str(cause)[:200]}"


def install(app) -> None:
    """Registers the handlers that give every error the OpenAI shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def invalid(request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()) or [{"loc": ("body",), "msg": "invalid"}])
        if param == "body" and (hint := content_type_hint(request.headers.get("content-type"))):
            message = hint
        return JSONResponse(error_body(message, param=param), status_code=400)

    async def http_error(request, exc: HTTPException):
        kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        param = "body" if exc.status_code == 400 else None  # starlette's 400: a body it could not parse
        message = unparsed_body(request.headers.get("content-encoding"), exc.__cause__) if param else None
        return JSONResponse(error_body(message or str(exc.detail), type=kind, param=param),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def crashed(request, exc: Exception):
        # A bug, not the client's fault: log the traceback, answer in the OpenAI shape without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); see the server log",
                                       type="server_error", code="internal_error"), status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crashed)
