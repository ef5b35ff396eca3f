"""The BentoML service: /embed, /classify, /search, /duplicates on uploaded images; /add and /remove change the
index (with the write token); plus BentoML's /livez, /readyz, /metrics.

    SSLFORGE_MODEL=runs/NAME SSLFORGE_INDEX=idx/NAME bentoml serve        # from the project root (bentofile.yaml)
    sslforge serve --model runs/NAME --index idx/NAME                    # the same, with options

Two services, as BentoML composes them: `SSLForge` (the public one) checks and preprocesses each
request on its own, so a bad upload gets a 4xx and touches nothing else, then applies the probe head
or searches the index; `Encoder`, which it depends on, runs the backbone behind adaptive batching,
so concurrent requests share one model call. With batching off (SSLFORGE_BATCHING=0) the same path
runs one request per model call, so the two compare fairly.
"""
from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from starlette.responses import JSONResponse

from retrieval.text import shown
from serve import circus, connections
from serve.engine import BadInput, Engine, hand_back_freed_images
from serve.guard import RequestGuard, filenames_of, forms_of, texts_of
from serve.settings import Settings, SettingsError, from_env


def _preflight() -> Settings:
    """The settings; in the `bentoml serve` main process, also the full startup check.

    Checking there, before any worker starts, makes a missing or mismatched model dir / index stop
    `bentoml serve` at once with one line (a worker failing in __init__ would be restarted forever).
    Other importers (workers, `bentoml build`, tests) skip it.
    """
    try:
        settings = from_env(require_model=False)
        if sys.argv[1:2] == ["serve"]:
            Engine.load(from_env()).close()  # the check only: each worker opens its own collection
    except SettingsError as e:
        raise SystemExit(f"sslforge service: {e}") from None
    return settings


SETTINGS = _preflight()  # BentoML takes the batching knobs at class definition
circus.lock_down()  # the process manager's control sockets: Unix sockets in a private folder, not TCP ports
hand_back_freed_images()  # a worker's memory follows what it decodes at once (see PixelBudget), not its threads
connections.install(SETTINGS.limits)  # header and body timeouts, a cap on slow connections (uvicorn has none)


# BentoML 1.4.39's service client replaces its HTTP session every 100 calls or 300 s and closes the old one
# while other calls are still in flight on it (_bentoml_impl/client/proxy2.py, SessionManager.get_session):
# they fail with "Server disconnected" or "Connection closed". `_keep_one_session` turns the refresh off; as
# a safety net (the attribute is private), the idempotent call to the encoder is retried.
ENCODER_TRIES = 3
TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, RuntimeError)


def _keep_one_session(client: object) -> None:
    manager = getattr(client, "_session_manager", None)
    if manager is not None and hasattr(manager, "max_requests"):
        manager.max_requests, manager.max_age = sys.maxsize, math.inf


def _load(backbone: bool) -> Engine:
    try:
        settings = from_env()
        return Engine.load(replace(settings, index=None) if backbone else settings, backbone=backbone)
    except SettingsError as e:
        raise SystemExit(f"sslforge service: {e}") from None


def _texts(ctx: bentoml.Context, *names: str) -> dict[str, str]:
    """The named text fields exactly as sent ("" when absent): BentoML's own values may have been JSON-decoded."""
    texts = texts_of(ctx.request)
    return {name: texts.get(name, "") for name in names}


def refusal(e: BadInput, ctx: bentoml.Context | None = None) -> JSONResponse:
    """The public endpoints' 4xx: {"error": "<one line>"}, returned rather than raised, so a client's mistake
    is one access-log line and not a server error with a traceback. (An endpoint with a `ctx` answers with
    ctx's status, whatever the response says: it is set too.)"""
    if ctx is not None:
        ctx.response.status_code = e.status
    return JSONResponse({"error": shown(e)}, status_code=e.status)


@bentoml.service(name="sslforge-encoder", traffic={"timeout": 120}, metrics={"enabled": True})
class Encoder:
    """The backbone alone: preprocessed images in, raw features out, batched across concurrent requests."""

    def __init__(self) -> None:
        self.engine = _load(backbone=True)

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def features(self, batch: np.ndarray) -> np.ndarray:
        """Raw backbone features (n, D) of preprocessed images (n, 3, crop, crop): the one model call.

        Reachable only by SSLForge (BentoML serves a dependency on its own socket, not the public port).
        """
        return self.engine.features(batch)


@bentoml.service(name="sslforge", traffic={"timeout": 120}, metrics={"enabled": True})
class SSLForge:
    """Embeddings, linear-probe predictions and image search with one model dir (and index)."""

    encoder = bentoml.depends(Encoder)

    def __init__(self) -> None:
        self.engine = _load(backbone=False)

    async def _features(self, images: list[Path]) -> np.ndarray:
        """Check and preprocess this request's uploads (BadInput), then send them to the (batching) encoder."""
        batch = await asyncio.to_thread(self.engine.prepare, images)  # decoding stays off the event loop
        client = self.encoder.to_async
        _keep_one_session(client)
        for attempt in range(1, ENCODER_TRIES + 1):
            try:
                return np.asarray(await client.features(batch))
            except TRANSPORT_ERRORS:  # the client closed its session under this call: see ENCODER_TRIES
                if attempt == ENCODER_TRIES:
                    raise

    @bentoml.api
    async def embed(self, images: list[Path]) -> dict:
        """L2-normalised embeddings, one row per uploaded image (form field `images`, one or more files)."""
        try:
            vectors = self.engine.embeddings(await self._features(images))
        except BadInput as e:
            return refusal(e)
        return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1]), "model": self.engine.embedder.fingerprint}

    @bentoml.api
    async def classify(self, image: Path, k: int = 5) -> dict:
        """Top-k linear-probe labels with probabilities (404 when the model dir has no head)."""
        try:
            self.engine.check_k(k, len(self.engine.require_head()))
            feats = await self._features([image])
            return {"predictions": (await asyncio.to_thread(self.engine.classify, feats, k))[0]}
        except BadInput as e:
            return refusal(e)

    @bentoml.api
    async def search(self, image: Path, ctx: bentoml.Context, k: int = 10, where: Any = "",
                     path_prefix: Any = "") -> dict:
        """The k nearest indexed images: id, path (relative to the index's root), label, cosine score, user fields.

        `where`: a JSON object of field values the rows must have ({"label": "cat"}); `path_prefix`: only rows whose
        path starts with it. (Text fields are read as sent, through the guard: see texts_of.)"""
        try:
            self.engine.check_k(k, len(self.engine.require_index()))
            where_ = self.engine.parse_where(**_texts(ctx, "where", "path_prefix"))
            feats = await self._features([image])
            return {"results": (await asyncio.to_thread(self.engine.search, feats, k, where_))[0]}
        except BadInput as e:
            return refusal(e, ctx)

    @bentoml.api
    async def duplicates(self, image: Path, ctx: bentoml.Context, threshold: float = 0.95, where: Any = "",
                         path_prefix: Any = "") -> dict:
        """The indexed rows whose cosine similarity to the image is at least `threshold`, most similar first
        (at most SSLFORGE_MAX_K of them); `where` and `path_prefix` as for /search."""
        try:
            self.engine.require_index()
            self.engine.check_threshold(threshold)
            where_ = self.engine.parse_where(**_texts(ctx, "where", "path_prefix"))
            feats = await self._features([image])
            hits = (await asyncio.to_thread(self.engine.duplicates, feats, threshold, where_))[0]
            return {"duplicates": hits, "threshold": threshold}
        except BadInput as e:
            return refusal(e, ctx)

    @bentoml.api
    async def add(self, images: list[Path], ctx: bentoml.Context, meta: Any = "") -> dict:
        """Embed the uploaded images and append them to the index; answers their new ids once they are on disk.

        Needs the write token. `meta`: a JSON object of fields for every image, or a list of objects, one per
        image ("label" and "path" set the row's label and path; other fields can be filtered on). An optional
        `Idempotency-Key` header makes a retry safe: a repeat of a key answers the first add's ids, adding nothing."""
        try:
            self.engine.require_index()
            key = self.engine.check_key(ctx.request.headers.get("idempotency-key"))
            feats = await self._features(images)
            names = filenames_of(ctx.request, "images")
            ids = await asyncio.to_thread(self.engine.add, feats, names, key=key, **_texts(ctx, "meta"))
            return {"ids": ids, "count": len(self.engine.index)}
        except BadInput as e:
            return refusal(e, ctx)

    @bentoml.api
    async def remove(self, ids: Any, ctx: bentoml.Context) -> dict:
        """Stop returning these row ids (`ids`: 3,5,8 or [3, 5, 8]); needs the write token."""
        try:
            return await asyncio.to_thread(self.engine.remove, **_texts(ctx, "ids"))
        except BadInput as e:
            return refusal(e, ctx)


# every request to an endpoint is checked before BentoML parses it (serve/guard.py): malformed or oversized forms
# get a 4xx, and BentoML never sees text where a file belongs (it would fetch a URL given there)
SSLForge.add_asgi_middleware(RequestGuard, forms=forms_of(SSLForge), limits=SETTINGS.limits,
                              write_token=SETTINGS.write_token)
