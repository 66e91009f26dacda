"""HTTP server over a `Recommender` (FastAPI + uvicorn, optional: `pip install "genrec-hf[serve]"`).

    genrec-hf serve MODEL_DIR [--adapter NAME=DIR ...] [--host 127.0.0.1] [--port 8000]

Endpoints:
  * `POST /recommend` {history | histories | user_id, k, task?, exclude_seen?, candidates?, timestamps?}
    → {"items": [{item_id, score, title}, ...]} (or {"results": [[...], ...]} for `histories`);
  * `POST /events` {user_id, events, timestamps?} appends to that user's history and extends their cached
    backbone state with the new events only (`serving.state.UserStateStore`: the most recent `max_events` events,
    LRU beyond `max_users` users, backbone caches bounded by `max_cache_bytes`); `POST /recommend` with `user_id`
    recommends from the cached state, excluding the stored history;
  * `GET /health`, `GET /items/{item_id}`.

Errors are JSON `{"error": {"type", "message"}}` with a 4xx status: 400 malformed JSON, 404 unknown item in the
URL or unknown user, 413 body over `max_body_bytes` or more than `max_rows` histories in one request, 422 invalid
request (unknown item in the body, empty history, k out of range, unknown task, wrong field types: `k` and
timestamps are integers, not booleans or strings, and timestamps fit in 64 bits). A failed `/events` stores
nothing. Unexpected failures answer 500 without a stack trace (logged on the server).

Shutdown: on SIGTERM / Ctrl-C the server stops accepting connections and waits at most `shutdown_timeout` seconds
for requests in flight (a client that sends half a body and stalls cannot keep it alive).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Optional, Union

from .recommender import Recommender, UnknownItemError, UnknownTaskError
from .state import DEFAULT_MAX_CACHE_BYTES, UnknownUserError, UserStateStore

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError('The HTTP server needs FastAPI and uvicorn, which are not installed: '
                      'pip install "genrec-hf[serve]"') from None

logger = logging.getLogger(__name__)

RawId = Union[StrictStr, StrictInt]  # a JSON true is not item 1
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_K = 1000
DEFAULT_MAX_ROWS = 1000  # histories per POST /recommend: the response grows with rows × k
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: Optional[list[RawId]] = None
    histories: Optional[list[list[RawId]]] = None
    user_id: Optional[StrictStr] = None
    k: StrictInt = 10
    task: Optional[StrictStr] = None
    exclude_seen: bool = True
    candidates: Optional[list[RawId]] = None
    timestamps: Optional[list[StrictInt]] = None


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: StrictStr = Field(min_length=1)
    events: list[RawId] = Field(min_length=1)
    timestamps: Optional[list[StrictInt]] = None


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes` (declared Content-Length or counted while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = _error(413, "payload_too_large", f"request body of {int(length)} bytes is over the limit of "
                              f"{self.max_bytes} bytes.")
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, f"request body is over the limit of {self.max_bytes} bytes.")
            return message

        await self.app(scope, limited, send)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(recommender: Recommender, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_k: int = DEFAULT_MAX_K, max_rows: int = DEFAULT_MAX_ROWS, max_users: int = 100_000,
               max_events: int = 1024, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
               overflow_keep: int | None = None) -> FastAPI:
    """The FastAPI app serving `recommender` (see the module docstring for the endpoints and errors).

    Installs a fresh `UserStateStore` with the given bounds as `recommender.user_states`, so in-process
    `recommender.update` / `recommend_users` calls and the HTTP endpoints share one per-user state (so: one app
    per recommender).
    """
    app = FastAPI(title="genrec_hf recommender", version="1")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    store = recommender.user_states = UserStateStore(recommender, max_users=max_users, max_events=max_events,
                                                     max_cache_bytes=max_cache_bytes, overflow_keep=overflow_keep)
    app.state.recommender, app.state.user_states = recommender, store
    max_k = min(max_k, recommender.num_items)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = list(error.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "request body is not valid JSON.")
        return _error(422, "invalid_request", _validation_message(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return _error(error.status_code, kinds.get(error.status_code, "http_error"), str(error.detail))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.kind, error.message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal server error (details are in the server log).")

    def call(func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Recommender call, turning its user errors into 4xx ApiErrors."""
        try:
            return func(*args, **kwargs)
        except UnknownUserError as error:
            raise ApiError(404, "unknown_user", str(error)) from None
        except UnknownItemError as error:
            raise ApiError(422, "unknown_item", str(error)) from None
        except UnknownTaskError as error:
            raise ApiError(422, "unknown_task", str(error)) from None
        except ValueError as error:
            raise ApiError(422, "invalid_request", str(error)) from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "num_items": recommender.num_items, "tasks": list(recommender.tasks),
                "index": recommender.index_kind or "exact", "users": len(store), "max_k": max_k,
                "cache_bytes": store.cache_bytes}

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        try:
            return recommender.item(item_id)
        except UnknownItemError:
            raise ApiError(404, "unknown_item", f"Unknown item id {item_id!r}: not in this model's catalog.") \
                from None

    @app.post("/events")
    def events(body: EventsRequest) -> dict[str, Any]:
        raw = [str(e) for e in body.events]
        if body.timestamps is not None and len(body.timestamps) != len(raw):
            raise ApiError(422, "invalid_request", f"timestamps has {len(body.timestamps)} values for {len(raw)} "
                           "events; give one per event or none.")
        count = call(recommender.update, body.user_id, raw, timestamps=body.timestamps)  # stores all or nothing
        return {"user_id": body.user_id, "num_events": count}

    @app.post("/recommend")
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        given = [name for name in ("history", "histories", "user_id") if getattr(body, name) is not None]
        if len(given) != 1:
            raise ApiError(422, "invalid_request", "give exactly one of history, histories or user_id"
                           + (f" (got {', '.join(given)})." if given else "."))
        if not 1 <= body.k <= max_k:
            raise ApiError(422, "invalid_request", f"k={body.k} is out of range: expected 1..{max_k}.")
        timestamps: Any = body.timestamps
        candidates = [str(c) for c in body.candidates] if body.candidates is not None else None
        if body.user_id is not None:
            if timestamps is not None:
                raise ApiError(422, "invalid_request", "timestamps go with the events (POST /events), not with a "
                               "user_id request.")
            result = call(recommender.recommend_users, body.user_id, body.k, task=body.task,
                          exclude_seen=body.exclude_seen, candidates=candidates)
            return {"items": [r.to_dict() for r in result], "k": body.k, "task": body.task}
        histories = body.history if body.history is not None else body.histories
        if body.histories is not None and (not body.histories or timestamps is not None):
            raise ApiError(422, "invalid_request", "histories must be non-empty and takes no timestamps.")
        if body.histories is not None and len(body.histories) > max_rows:
            raise ApiError(413, "too_many_rows", f"{len(body.histories)} histories in one request is over the limit "
                           f"of {max_rows} (max_rows); send them in several requests.")
        if body.history is not None and not body.history:
            raise ApiError(422, "invalid_request", "The history is empty: give at least one raw item id.")
        if timestamps is not None and body.histories is None and len(timestamps) != len(histories):
            raise ApiError(422, "invalid_request", f"timestamps has {len(timestamps)} values for {len(histories)} "
                           "history events.")
        result = call(recommender.recommend, [str(i) for i in histories] if body.histories is None
                      else [[str(i) for i in h] for h in histories], body.k, task=body.task,
                      timestamps=timestamps, exclude_seen=body.exclude_seen, candidates=candidates)
        if body.histories is not None:
            return {"results": [[r.to_dict() for r in row] for row in result], "k": body.k, "task": body.task}
        return {"items": [r.to_dict() for r in result], "k": body.k, "task": body.task}

    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
                   shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S, **options: Any) -> Any:
    """The uvicorn configuration every server of the package runs with: requests in flight get at most
    `shutdown_timeout` seconds once a shutdown is asked for (uvicorn would otherwise wait for ever on a client that
    stalls in the middle of its request body)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=shutdown_timeout, **options)


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, examples, benchmarks); stops on exit.

        with ServerThread(create_app(recommender)) as server:
            httpx.post(f"{server.url}/recommend", json={...})
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, log_level="warning", lifespan="off",
                                                    access_log=False, shutdown_timeout=shutdown_timeout))
        self.thread = threading.Thread(target=self.server.run, name="genrec-hf-server", daemon=True)
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)


def serve(model_dir: str, *, adapters: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 8000,
          index: str | None = None, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S, **app_options: Any) -> None:
    """Load the model once and serve it with uvicorn until interrupted."""
    import uvicorn

    recommender = Recommender.from_pretrained(model_dir, adapters=adapters, index=index)
    if index is not None and index != "exact":
        for task in (None, *recommender.tasks):
            recommender.index(task)  # build before the first request
    uvicorn.Server(uvicorn_config(create_app(recommender, **app_options), host, port,
                                  shutdown_timeout=shutdown_timeout)).run()
