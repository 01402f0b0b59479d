"""Control-plane storage: ``open_store(url)`` picks the implementation from the URL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from control.store.base import Store, StoreUnavailable

__all__ = ["Store", "StoreKind", "StoreUnavailable", "StoreUrl", "open_store", "unavailable_errors"]


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the store cannot be reached right now" (answered ``service_unavailable``)."""
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.OperationalError, ConnectionError, TimeoutError]
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is optional
        return tuple(errors)
    errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError]
    return tuple(errors)


class StoreKind(StrEnum):
    SQLITE = "sqlite"
    REDIS = "redis"


@dataclass(frozen=True)
class StoreUrl:
    """``sqlite:///relative/or/absolute.db`` (``sqlite:////abs.db`` also works), ``sqlite://:memory:``,
    ``redis://host:port/db`` (``rediss://`` for TLS)."""

    kind: StoreKind
    target: str  # the sqlite path or ``:memory:``; the full redis URL

    @classmethod
    def parse(cls, url: str) -> StoreUrl:
        if url == "sqlite://:memory:":
            return cls(StoreKind.SQLITE, ":memory:")
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
            if not path:
                raise ValueError(f"store URL {url!r} names no file")
            return cls(StoreKind.SQLITE, path)
        if url.startswith(("redis://", "rediss://", "unix://")):
            parts = urlsplit(url)
            if parts.scheme != "unix" and not parts.hostname:
                raise ValueError(f"store URL {url!r} names no host")
            return cls(StoreKind.REDIS, url)
        raise ValueError(
            f"store URL {url!r} is not sqlite:///PATH, sqlite://:memory: or redis://HOST:PORT/DB"
        )


async def open_store(url: str, *, prefix: str = "levelchat:", timeout_s: float = 1.0) -> Store:
    """Open (and for SQLite create) the store; ``prefix`` namespaces Redis keys; ``timeout_s``
    bounds Redis socket connects and reads (``control.store.bounded`` bounds whole calls)."""
    parsed = StoreUrl.parse(url)
    if parsed.kind is StoreKind.SQLITE:
        from control.store.sqlite import SqliteStore

        return await SqliteStore.open(parsed.target)
    from control.store.redis import RedisStore

    return await RedisStore.open(parsed.target, prefix, timeout_s=timeout_s)
