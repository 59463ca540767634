"""What the store-backed commands (`keys`, `pins`, `secrets`) share: a config loaded or a clear exit 2,
one store opened for one action and closed, and every store error turned into one line and an exit code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from stile.config.load import ConfigError, LoadedConfig, load_config


class _Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=_Closable)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def describe(state: str, exc: BaseException) -> str:
    """One line naming the store (password hidden) and the driver's own message."""
    try:
        where = make_url(state).render_as_string(hide_password=True)
    except (ValueError, SQLAlchemyError):
        where = "(unparseable URL)"
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot use state store {where}: {detail}"


def load_or_fail(config: Path) -> LoadedConfig:
    """The config, or exit 2 with one line per problem."""
    try:
        return load_config(config)
    except ConfigError as exc:
        raise fail("; ".join(exc.problems), 2) from exc


def run_on_store(url: str, open_store: Callable[[], S], action: Callable[[S], Awaitable[T]], *,
                 refused: tuple[type[Exception], ...] = ()) -> T:
    """Open the store, run `action` on it, close it. `refused` errors (the store saying no) exit 1 with their
    message; a bad URL or argument (ValueError) exits 2; a store that cannot be used exits 1 naming it."""

    async def go() -> T:
        store = open_store()
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(go())
    except refused as exc:
        raise fail(str(exc)) from exc
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise fail(describe(url, exc)) from exc
