"""Request bodies parsed and validated in a worker thread (RELIABILITY item 22).

FastAPI reads a route's pydantic body on the event loop: a 12 MB chat body of 300,000 messages took pydantic's
validators seconds, and /health (and every stream) waited that long. A route takes its body as
`req: Annotated[Model, Depends(body(Model))]` instead, and `openapi_extra=documented(Model)` keeps the schema
showing it.
Errors are the ones FastAPI's own reading raises (json_invalid, a missing body, the model's, a body it cannot parse),
so errors.install answers them alike.

No `from __future__ import annotations`: FastAPI reads the dependency's `Request` annotation as a real class.
"""

import json

from pydantic import BaseModel, ValidationError


def body(model: type[BaseModel]):
    """A FastAPI dependency: the request's JSON body as `model`, parsed and validated off the event loop."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    async def read(request: Request) -> model:
        try:
            raw = await request.body()  # the bytes arrive on the loop (the gate bounds them); the work is in a thread
        except ClientDisconnect:  # the client left, or the gate cut a body over the limit (413): no server error
            raise HTTPException(400, "the client disconnected before the whole request body arrived") from None
        return await run_in_threadpool(parse, model, raw, request.headers.get("content-type"))

    return read


def parse(model: type[BaseModel], raw: bytes, content_type: str | None) -> BaseModel:
    """raw as `model`, read as FastAPI reads a body: JSON when the Content-Type says so, else the bytes as they
    are (which no model takes; errors.install names the header).

    Raises:
        RequestValidationError: invalid JSON, an empty body, or the model's errors (their loc under "body").
        HTTPException: 400 for a body that cannot be parsed at all (not UTF-8, nested too deep), its cause chained.
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    data = raw
    if _is_json(content_type):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                           "input": {}, "ctx": {"error": e.msg}}]) from e
        except Exception as e:  # bytes that are not UTF-8, JSON nested past the recursion limit
            raise HTTPException(400, "There was an error parsing the body") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _is_json(content_type: str | None) -> bool:
    """FastAPI's strict rule: application/json or application/<anything>+json; none is not JSON."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def documented(model: type[BaseModel]) -> dict:
    """A route's openapi_extra naming `model` as its JSON body (the schema add_schemas puts in the components)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{model.__name__}"}}}}}


def add_schemas(app, models: list[type[BaseModel]]) -> None:
    """Puts the schemas of `models` (and the models they hold) in app's OpenAPI components, where documented() refers
    to them: FastAPI lists only the bodies it reads itself, so a shadow app that reads them writes them, as FastAPI
    writes any body."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make()  # cached by FastAPI in app.openapi_schema: filled in place once
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in _body_schemas(models).items():
                known.setdefault(name, definition)
        return app.openapi_schema

    app.openapi = openapi


def _body_schemas(models: list[type[BaseModel]]) -> dict:
    from fastapi import FastAPI

    shadow = FastAPI()
    for model in models:
        def endpoint(req: model) -> None: ...

        shadow.post(f"/{model.__name__}")(endpoint)
    return shadow.openapi()["components"]["schemas"]
