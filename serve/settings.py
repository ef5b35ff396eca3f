"""What the service serves and how, from environment variables (so `bentoml serve` and `sslforge serve` agree).

    SSLFORGE_MODEL            model dir (required)               SSLFORGE_INDEX     index dir (optional: no /search)
    SSLFORGE_BACKEND          torch | onnx | tensorrt (torch)    SSLFORGE_DEVICE    auto | cpu | cuda (auto)
    SSLFORGE_BATCHING         1 | 0: adaptive batching (1)       SSLFORGE_MAX_BATCH_SIZE   32
    SSLFORGE_MAX_LATENCY_MS   batching latency budget (10000)    SSLFORGE_MAX_IMAGES       images per request (64)
    SSLFORGE_MAX_BYTES        bytes per upload (20 MB)           SSLFORGE_MAX_PIXELS       pixels per image (40 M)
    SSLFORGE_MAX_K            largest k (100)                    SSLFORGE_MAX_PENDING      slow connections (64)
    SSLFORGE_MAX_REQUEST_PIXELS  pixels of all images in one request (400 M)
    SSLFORGE_DECODE_PIXELS    pixels one worker decodes at once, all requests together (40 M)
    SSLFORGE_HEADER_TIMEOUT   seconds for a request's headers (10)   SSLFORGE_BODY_TIMEOUT  ... for its body (60)
    SSLFORGE_WRITE_TOKEN      the secret /add and /remove need (unset: a read-only service); at least 16 characters

The batching values are read when serve.service is imported: BentoML fixes them in the API decorator.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

MIN_TOKEN = 16


class SettingsError(ValueError):
    """A serving setting (environment variable or option) is missing or malformed."""


@dataclass(frozen=True)
class Limits:
    """What one request may carry (anything over is refused with a 4xx before it reaches the model), and how long
    and how many slow clients are waited for (see serve/connections.py)."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000  # per image
    max_images: int = 64
    max_request_pixels: int = 400_000_000  # all images of one request together
    decode_pixels: int = 40_000_000  # decoded at once in one worker, across its concurrent requests
    max_k: int = 100
    header_timeout: int = 10  # seconds from connecting (or a request's first byte) to its complete headers
    body_timeout: int = 60  # seconds from the headers to the complete body: one 20 MB image at 3 Mbit/s
    max_pending: int = 64  # connections still sending their request; over it, the oldest is closed


@dataclass(frozen=True)
class Settings:
    model: str
    index: str | None = None
    backend: str = "torch"
    device: str = "auto"
    batching: bool = True
    max_batch_size: int = 32
    max_latency_ms: int = 10_000
    limits: Limits = Limits()
    write_token: str | None = field(default=None, repr=False)  # never printed

    def __repr__(self) -> str:  # a database URL's password is masked, the write token left out
        from retrieval.location import display

        parts = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                parts.append(f"{f.name}={display(value) if f.name == 'index' and value else value!r}")
        return f"Settings({', '.join(parts)})"

    @property
    def writable(self) -> bool:
        return bool(self.write_token) and bool(self.index)

    def env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a `bentoml serve` process."""
        env = {"SSLFORGE_MODEL": self.model, "SSLFORGE_BACKEND": self.backend, "SSLFORGE_DEVICE": self.device,
               "SSLFORGE_BATCHING": "1" if self.batching else "0",
               "SSLFORGE_MAX_BATCH_SIZE": str(self.max_batch_size),
               "SSLFORGE_MAX_LATENCY_MS": str(self.max_latency_ms)}
        if self.index:
            env["SSLFORGE_INDEX"] = self.index
        for f in fields(Limits):
            env[f"SSLFORGE_{f.name.upper()}"] = str(getattr(self.limits, f.name))
        if self.write_token:
            env["SSLFORGE_WRITE_TOKEN"] = self.write_token
        return env


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def from_env(env: Mapping[str, str] | None = None, *, require_model: bool = True) -> Settings:
    """Settings from SSLFORGE_* variables; a missing model dir is an error unless `require_model` is False."""
    env = os.environ if env is None else env
    model = env.get("SSLFORGE_MODEL", "")
    if require_model and not model:
        raise SettingsError("SSLFORGE_MODEL is not set: point it at a model dir (export SSLFORGE_MODEL=runs/NAME), "
                            "or start the service with `sslforge serve --model runs/NAME`")
    batching = env.get("SSLFORGE_BATCHING", "1").strip().lower()
    if batching not in ("1", "0", "true", "false", "on", "off"):
        raise SettingsError(f"SSLFORGE_BATCHING={batching!r}: use 1 or 0")
    limits = Limits(**{f.name: _int(env, f"SSLFORGE_{f.name.upper()}", f.default, 1) for f in fields(Limits)})
    token = env.get("SSLFORGE_WRITE_TOKEN") or None
    if token is not None and (len(token) < MIN_TOKEN or not token.isprintable() or " " in token):
        raise SettingsError(f"SSLFORGE_WRITE_TOKEN must be at least {MIN_TOKEN} printable characters without spaces "
                            f"(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return Settings(model=model, index=env.get("SSLFORGE_INDEX") or None,
                    backend=env.get("SSLFORGE_BACKEND", "torch"), device=env.get("SSLFORGE_DEVICE", "auto"),
                    batching=batching in ("1", "true", "on"),
                    max_batch_size=_int(env, "SSLFORGE_MAX_BATCH_SIZE", 32, 2),
                    max_latency_ms=_int(env, "SSLFORGE_MAX_LATENCY_MS", 10_000, 1), limits=limits, write_token=token)
