"""The ASGI application: routes, sessions, health, metrics and lifespan wiring.

``create_app(config)`` builds the web app (``ROLE=web``) or the worker's
small health-and-metrics app (``ROLE=worker``, which also runs the consumer).

With ``DATABASE_SHARDS`` every user's rows are read and written on their shard
(``sample_app.shards``); a post looked up by id alone, and a search, ask every
shard.  Shard 0 keeps what is not a user's (the session key when SECRET_KEY is
unset).  The search engine is not used with shards yet: search is PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sample_app import metrics, policy, search, shards
from sample_app.cache import Cache
from sample_app.config import Config
from sample_app.db import Database, Row
from sample_app.jobs import Broker, FanoutJob, Jobs, Store, Worker
from sample_app.streaming import Stream, StreamWorker, Topic

log = logging.getLogger(__name__)

SESSION_COOKIE = "z2m_session"
SESSION_MAX_AGE = 30 * 24 * 3600
STATIC_CACHE_CONTROL = "public, max-age=31536000, immutable"
FEED_LENGTH = 20


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Session:
    """Who the caller is and when they last wrote (for read-your-writes)."""

    user_id: int
    last_write_at: float | None = None


class SessionCodec:
    """Signed, stateless session tokens: any app process with the key can read them."""

    def __init__(self, secret_key: str) -> None:
        """Sign with ``secret_key``."""
        self._serializer = URLSafeTimedSerializer(secret_key, salt="z2m-session")

    def dumps(self, session: Session) -> str:
        """Encode and sign."""
        return self._serializer.dumps({"u": session.user_id, "w": session.last_write_at})

    def loads(self, token: str | None) -> Session | None:
        """Verify and decode; None if missing, tampered with or expired."""
        if not token:
            return None
        try:
            data = self._serializer.loads(token, max_age=SESSION_MAX_AGE)
            return Session(user_id=int(data["u"]), last_write_at=data.get("w"))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None


# --------------------------------------------------------------------------- state


@dataclass
class State:
    """Everything a request handler may need; optional parts are None when off."""

    config: Config
    db: Database | None = None
    """The one database, or shard 0 with DATABASE_SHARDS."""
    shards: shards.ShardedDatabase | None = None
    cache: Cache | None = None
    broker: Broker | None = None
    stream: Stream | None = None
    stream_worker: StreamWorker | None = None
    jobs: Jobs | None = None
    sessions: SessionCodec | None = None
    search_engine: search.SearchEngine | None = None
    schema_ready: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    draining: bool = False
    """Told to stop: still serving, but out of the load balancer and shedding keep-alive."""


async def _prepare_database(state: State) -> None:
    """Migrate and load the session key, retrying until the primary lets us."""
    db = state.db
    assert db is not None
    delay = 0.5
    while True:
        try:
            applied = await (state.shards or db).migrate()
            if applied:
                log.info("applied migrations %s", applied)
            if state.config.secret_key is None:
                state.sessions = SessionCodec(await _shared_secret(db))
            break
        except Exception as exc:  # the primary may simply not be up yet
            log.warning("database not ready (%r), retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    state.schema_ready.set()


async def _shared_secret(db: Database) -> str:
    """The session key every app process agrees on when SECRET_KEY is unset.

    The first process to get here stores a random key; everyone reads that row.
    """
    async with db.transaction() as tx:
        await tx.fetch(
            "INSERT INTO app_secret (id, key) VALUES (1, %s) ON CONFLICT DO NOTHING",
            (secrets.token_urlsafe(32),),
        )
        rows = await tx.fetch("SELECT key FROM app_secret WHERE id = 1")
    return str(rows[0]["key"])


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state: State = app.state.z2m
    config = state.config
    if config.secret_key is not None:
        state.sessions = SessionCodec(config.secret_key)
    elif config.database_url is None and not config.database_shards:
        # No database means no users, so per-process sessions lose nothing.
        state.sessions = SessionCodec(secrets.token_urlsafe(32))
    if config.database_shards:
        state.shards = shards.ShardedDatabase(config.database_shards)
        state.db = state.shards.shards[0]
        await state.shards.open()
        state.tasks.append(asyncio.create_task(_prepare_database(state)))
    elif config.database_url is not None:
        # Workers only write, so they don't need (or watch) the replicas.
        replicas = config.replica_urls if config.role == "web" else ()
        state.db = Database(config.database_url, replicas)
        await state.db.open()
        state.tasks.append(asyncio.create_task(_prepare_database(state)))
        if replicas:
            state.tasks.append(asyncio.create_task(state.db.watch_replicas()))
    if config.role == "web" and config.redis_url is not None:
        state.cache = Cache.from_url(config.redis_url)
    elif config.role == "web" and config.redis_sentinels and config.redis_master_name:
        state.cache = Cache.from_sentinels(
            config.redis_sentinels, config.redis_master_name, config.redis_password
        )
    elif config.role == "web" and config.redis_cluster_nodes:
        state.cache = Cache.from_cluster(config.redis_cluster_nodes, config.redis_password)
    if config.broker_url is not None:
        state.broker = Broker(config.broker_url, config.queue_name)
        if config.role == "web":
            state.tasks.append(asyncio.create_task(state.broker.connect_forever()))
    if config.kafka_servers is not None:
        topic = Topic(
            config.kafka_servers, config.kafka_topic, config.kafka_group, config.kafka_partitions
        )
        if config.role == "web":
            state.stream = Stream(topic)
            state.tasks.append(asyncio.create_task(state.stream.connect_forever()))
        elif state.db is not None:
            state.stream_worker = StreamWorker(_store(state), topic)
    if config.role == "web" and state.db is not None:
        # With both configured, new jobs go to Kafka: RabbitMQ is what a move drains.
        state.jobs = Jobs(_store(state), state.stream or state.broker)
        if config.search_url is not None and state.shards is not None:
            log.warning("SEARCH_URL is not used with DATABASE_SHARDS yet; searching PostgreSQL")
        elif config.search_url is not None:
            state.search_engine = search.SearchEngine(
                config.search_url, state.db, config.search_index
            )
            state.tasks.append(asyncio.create_task(_keep_search_index(state)))
    if config.role == "worker":
        # A worker given both sources consumes both, so either can be drained through it.
        if state.db is not None and state.broker is not None:
            state.tasks.append(asyncio.create_task(_run_worker(state)))
        if state.stream_worker is not None:
            state.tasks.append(asyncio.create_task(_run_stream_worker(state)))
        if state.db is None or (state.broker is None and state.stream_worker is None):
            log.warning(
                "ROLE=worker needs DATABASE_URL and BROKER_URL or KAFKA_BOOTSTRAP_SERVERS; idling"
            )
    log.info("started role=%s features=%s", config.role, ",".join(config.stage_features) or "none")
    try:
        yield
    finally:
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        closables = (state.broker, state.stream, state.cache, state.search_engine)
        for closable in (*closables, state.shards or state.db):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.close()


def _store(state: State) -> Store:
    """Where jobs write: every shard, or the one database."""
    if state.shards is not None:
        return state.shards
    assert state.db is not None
    return state.db


async def _keep_search_index(state: State) -> None:
    assert state.search_engine is not None
    await state.schema_ready.wait()
    await state.search_engine.watch()


async def _run_worker(state: State) -> None:
    assert state.db is not None and state.broker is not None
    await state.schema_ready.wait()
    while True:
        try:
            await Worker(_store(state), state.broker).run()
        except Exception as exc:  # keep consuming; unacked messages were requeued
            log.warning("consumer stopped (%r); restarting in 1s", exc)
            await state.broker.close()
            await asyncio.sleep(1.0)


async def _run_stream_worker(state: State) -> None:
    assert state.stream_worker is not None
    await state.schema_ready.wait()
    while True:
        try:
            await state.stream_worker.run()
        except Exception as exc:  # keep consuming; uncommitted offsets are processed again
            log.warning("Kafka consumer stopped (%r); restarting in 1s", exc)
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------- helpers


class HTTPError(Exception):
    """Abort a handler with a JSON error response."""

    def __init__(self, status: int, message: str) -> None:
        """Respond with ``status`` and ``{"error": message}``."""
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[Response]]


def _state(request: Request) -> State:
    state: State = request.app.state.z2m
    return state


def _jsonable(row: Row) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _session(request: Request) -> Session | None:
    codec = _state(request).sessions
    return codec.loads(request.cookies.get(SESSION_COOKIE)) if codec else None


def _require_session(request: Request) -> Session:
    session = _session(request)
    if session is None:
        raise HTTPError(401, "not signed in")
    return session


def _sticky(request: Request) -> bool:
    session = _session(request)
    return session is not None and policy.is_sticky(session.last_write_at, time.time())


def _db(request: Request) -> Database:
    state = _state(request)
    if state.db is None:
        raise HTTPError(503, "no database configured (DATABASE_URL is unset)")
    if not state.schema_ready.is_set():
        raise HTTPError(503, "database not ready yet")
    return state.db


def _home(request: Request, user_id: int) -> Database:
    """The database holding ``user_id``'s rows: their shard, or the one database."""
    db = _db(request)
    sharded = _state(request).shards
    return sharded.for_user(user_id) if sharded is not None else db


def _wrote(request: Request, response: Response, user_id: int) -> Response:
    """Stamp the session with "wrote just now" so this user's reads use the primary."""
    codec = _state(request).sessions
    assert codec is not None
    token = codec.dumps(Session(user_id=user_id, last_write_at=time.time()))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, httponly=True, samesite="lax"
    )
    return response


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


def _text_field(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value.strip()) <= max_length:
        raise HTTPError(400, f"{name!r} must be a string of 1 to {max_length} characters")
    return value.strip()


async def _cached_read(
    request: Request,
    key: str,
    rows: Callable[[bool], Awaitable[list[Row]]],
    *,
    many: bool = False,
) -> Response:
    """Cache-aside read of ``rows(primary)``; a user in their read-your-writes window skips it."""
    state = _state(request)
    sticky = _sticky(request)

    async def load() -> Any:
        found = [_jsonable(r) for r in await rows(sticky)]
        return found if many else (found[0] if found else None)

    if state.cache is None or sticky:
        value, result = await load(), ("bypass" if sticky and state.cache else "off")
    else:
        value, result = await state.cache.get_or_load(key, load)
    if value is None:
        raise HTTPError(404, "not found")
    return JSONResponse(value, headers={"X-Cache": result})


# --------------------------------------------------------------------------- routes


async def index(request: Request) -> Response:
    """A tiny HTML page that pulls the static assets (what the edge cache serves)."""
    return HTMLResponse(
        "<!doctype html><html><head><title>z2m feed</title>"
        '<link rel="stylesheet" href="/static/app.css"></head>'
        '<body><h1>z2m feed</h1><div id="feed"></div>'
        '<script src="/static/app.js"></script></body></html>'
    )


async def create_user(request: Request) -> Response:
    """``POST /api/users {"name"}``: sign up and get a session cookie."""
    db = _db(request)
    name = _text_field(await _json_body(request), "name", 64)
    sharded = _state(request).shards
    if sharded is not None:
        rows = await _create_user_on_shard(sharded, name)
    else:
        rows = await db.write(
            "INSERT INTO users (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
            " RETURNING id, name, created_at",
            (name,),
        )
    if not rows:
        raise HTTPError(409, "name taken")
    user = _jsonable(rows[0])
    return _wrote(request, JSONResponse(user, status_code=201), user["id"])


async def _create_user_on_shard(sharded: shards.ShardedDatabase, name: str) -> list[Row]:
    """Insert the user on their name's shard, which must hand out an id that routes to it.

    A shard whose sequence was not set by a move would give an id of another shard:
    the insert is rolled back and the caller gets a 503 rather than a lost user.
    """
    index, shard = sharded.for_new_user(name)
    async with shard.transaction() as tx:
        rows = await tx.fetch(
            "INSERT INTO users (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
            " RETURNING id, name, created_at",
            (name,),
        )
        if rows and shards.shard_index(int(rows[0]["id"]), len(sharded.shards)) != index:
            log.error("shard %d handed out user id %s of another shard", index, rows[0]["id"])
            raise HTTPError(503, "shard ids are not set up for sharding")
    return rows


async def me(request: Request) -> Response:
    """``GET /api/me``: the signed-in user."""
    session = _require_session(request)
    db = _home(request, session.user_id)
    rows = await db.read(
        "SELECT id, name, created_at FROM users WHERE id = %s",
        (session.user_id,),
        primary=_sticky(request),
    )
    if not rows:
        raise HTTPError(401, "unknown user")
    return JSONResponse(_jsonable(rows[0]))


async def follow(request: Request) -> Response:
    """``POST /api/users/{id}/follow``: follow a user."""
    db = _db(request)
    session = _require_session(request)
    followee = int(request.path_params["user_id"])
    sharded = _state(request).shards
    if sharded is not None:
        # The follow lives on the follower's shard, the followee maybe on another.
        if not await sharded.for_user(followee).read(
            "SELECT 1 FROM users WHERE id = %s", (followee,), primary=True
        ):
            raise HTTPError(404, "no such user")
        await sharded.follow(session.user_id, followee)
        return _wrote(request, Response(status_code=204), session.user_id)
    rows = await db.write(
        "INSERT INTO follows (follower_id, followee_id)"
        " SELECT %s, id FROM users WHERE id = %s"
        " ON CONFLICT DO NOTHING RETURNING followee_id",
        (session.user_id, followee),
    )
    # Nothing returned: either already following (fine) or no such user (404).
    exists = rows or await db.read(
        "SELECT 1 FROM follows WHERE follower_id = %s AND followee_id = %s",
        (session.user_id, followee),
        primary=True,
    )
    if not exists:
        raise HTTPError(404, "no such user")
    return _wrote(request, Response(status_code=204), session.user_id)


async def create_post(request: Request) -> Response:
    """``POST /api/posts {"body"}``: publish; followers are notified in the background."""
    session = _require_session(request)
    db = _home(request, session.user_id)
    text = _text_field(await _json_body(request), "body", 500)
    rows = await db.write(
        "INSERT INTO posts (author_id, body) VALUES (%s, %s)"
        " RETURNING id, author_id, body, created_at",
        (session.user_id, text),
    )
    post = _jsonable(rows[0])
    state = _state(request)
    if state.cache is not None:
        await state.cache.invalidate(f"user_posts:{session.user_id}")
    if state.search_engine is not None:
        await state.search_engine.index_post(post)
    assert state.jobs is not None
    how = await state.jobs.submit(FanoutJob.new(post_id=post["id"], author_id=session.user_id))
    return _wrote(request, JSONResponse({**post, "fanout": how}, status_code=201), session.user_id)


async def get_post(request: Request) -> Response:
    """``GET /api/posts/{id}``: one post (cached; posts never change)."""
    post_id = int(request.path_params["post_id"])
    db = _db(request)
    sharded = _state(request).shards

    async def rows(primary: bool) -> list[Row]:
        if sharded is not None:
            return await sharded.find_post(post_id)
        return await db.read(
            "SELECT id, author_id, body, created_at FROM posts WHERE id = %s",
            (post_id,),
            primary=primary,
        )

    return await _cached_read(request, f"post:{post_id}", rows)


async def user_posts(request: Request) -> Response:
    """``GET /api/users/{id}/posts``: a user's latest posts (cached, invalidated on write)."""
    user_id = int(request.path_params["user_id"])
    db = _home(request, user_id)

    async def rows(primary: bool) -> list[Row]:
        return await db.read(
            "SELECT id, author_id, body, created_at FROM posts WHERE author_id = %s"
            f" ORDER BY id DESC LIMIT {FEED_LENGTH}",
            (user_id,),
            primary=primary,
        )

    return await _cached_read(request, f"user_posts:{user_id}", rows, many=True)


async def notifications(request: Request) -> Response:
    """``GET /api/notifications``: posts by people the signed-in user follows."""
    session = _require_session(request)
    db = _home(request, session.user_id)
    rows = await db.read(
        "SELECT post_id, created_at FROM notifications WHERE user_id = %s"
        " ORDER BY post_id DESC LIMIT 50",
        (session.user_id,),
        primary=_sticky(request),
    )
    return JSONResponse([_jsonable(r) for r in rows])


async def search_posts(request: Request) -> Response:
    """``GET /api/search?q=...&limit=N``: posts matching every word of ``q``.

    Answered by OpenSearch when it is configured and usable, by PostgreSQL
    full-text search otherwise; ``backend`` (and ``X-Search-Backend``) says which.
    """
    db = _db(request)
    q = request.query_params.get("q", "").strip()
    if not 0 < len(q) <= search.MAX_QUERY_LENGTH:
        raise HTTPError(400, f"'q' must be 1 to {search.MAX_QUERY_LENGTH} characters")
    raw_limit = request.query_params.get("limit", str(search.DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= search.MAX_LIMIT:
        raise HTTPError(400, f"'limit' must be an integer from 1 to {search.MAX_LIMIT}")
    backend, rows = await search.search(
        _state(request).shards or db,
        _state(request).search_engine,
        q,
        int(raw_limit),
        primary=_sticky(request),
    )
    body = {"backend": backend, "q": q, "results": [_jsonable(r) for r in rows]}
    return JSONResponse(body, headers={"X-Search-Backend": backend})


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP.  Checks no dependency on purpose."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: each configured dependency, by name.

    The primary database is required: without it the app can do nothing, so
    it answers 503.  Replicas, Redis, the broker and the search engine are
    optional (the app degrades to the primary, to no cache, to inline jobs, to
    PostgreSQL search): if one is down the answer is 200 with ``"status":
    "degraded"``, so losing Redis doesn't pull every app pod out of the load
    balancer.  ``?strict=1`` makes any
    configured dependency that is down a 503.
    """
    state = _state(request)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    checks: dict[str, str] = {}
    required_down = False
    if state.db is not None:
        if not state.schema_ready.is_set():
            checks["database"] = "migrating"
        elif state.shards is not None:
            down_shards = await state.shards.ping()
            checks["database"] = "down" if down_shards else "ok"
            for index in range(len(state.shards.shards)):
                checks[f"shard{index}"] = "down" if index in down_shards else "ok"
        else:
            checks["database"] = "ok" if await state.db.ping_primary() else "down"
        required_down = checks["database"] != "ok"
        for index, health in enumerate(state.db.health):
            name = f"replica{index}"
            if health.usable():
                checks[name] = "ok"
            else:
                checks[name] = "lagging" if health.reachable else "down"
    if state.cache is not None:
        checks["redis"] = "ok" if await state.cache.ping() else "down"
    if state.broker is not None:
        connected = state.broker.channel is not None and not state.broker.channel.is_closed
        checks["broker"] = "ok" if connected else "down"
    if state.search_engine is not None:
        engine = state.search_engine
        checks["search"] = "ok" if engine.usable else ("indexing" if engine.reachable else "down")
    if state.stream is not None:
        checks["stream"] = "ok" if state.stream.connected else "down"
    if state.stream_worker is not None:
        checks["stream"] = "ok" if state.stream_worker.joined else "down"
    down = sorted(name for name, status in checks.items() if status != "ok")
    strict = request.query_params.get("strict") in {"1", "true"}
    failed = required_down or (strict and bool(down))
    body = {"status": "down" if failed else ("degraded" if down else "ok"), "down": down}
    return JSONResponse({**body, "checks": checks}, status_code=503 if failed else 200)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition, with pool and queue gauges refreshed first.

    ``app_queue_depth`` is the jobs waiting: RabbitMQ's ready messages, Kafka's group
    lag, or their sum while a move has both; unchanged when a source can't be asked.
    """
    state = _state(request)
    if state.db is not None:
        state.db.export_pool_stats()
    waiting: list[int | None] = []
    if state.broker is not None:
        waiting.append(await state.broker.depth())
    if state.stream is not None:
        waiting.append(await state.stream.lag())
    known = [w for w in waiting if w is not None]
    if waiting and len(known) == len(waiting):
        metrics.QUEUE_DEPTH.set(sum(known))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class ImmutableStaticFiles(StaticFiles):
    """Static files with a one-year immutable Cache-Control for the edge cache."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """Add the long-lived caching header to every file served."""
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = STATIC_CACHE_CONTROL
        return response


# --------------------------------------------------------------------------- middleware


class MetricsMiddleware:
    """Count and time every HTTP request by route template (bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request and record it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            # The router stores the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)


class DrainMiddleware:
    """While draining, close each connection after its response.

    A client's pooled keep-alive connection stays pinned to this pod after the pod
    leaves the Service's endpoints; answering with ``Connection: close`` makes the
    client's next request open a new connection, which the Service sends to a pod
    that is staying, instead of racing the server's close of an idle connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request; mark the response ``Connection: close`` while draining."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: State = scope["app"].state.z2m

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and state.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def create_app(config: Config) -> Starlette:
    """The ASGI app for ``config.role``."""
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
    if config.role == "web":
        static_dir = Path(__file__).parent / "static"
        routes += [
            Route("/", index),
            Route("/api/users", create_user, methods=["POST"]),
            Route("/api/me", me),
            Route("/api/users/{user_id:int}/follow", follow, methods=["POST"]),
            Route("/api/users/{user_id:int}/posts", user_posts),
            Route("/api/posts", create_post, methods=["POST"]),
            Route("/api/posts/{post_id:int}", get_post),
            Route("/api/notifications", notifications),
            Route("/api/search", search_posts),
            Mount("/static", ImmutableStaticFiles(directory=static_dir), name="static"),
        ]
    # A stage-6 service (SERVICE) serves only its own routes; the gateway sends it those.
    routes = [r for r in routes if config.serves(getattr(r, "path", ""))]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware), Middleware(DrainMiddleware)],
        exception_handlers={HTTPError: _http_error},
        lifespan=_lifespan,
    )
    app.state.z2m = State(config=config)
    return app
