"""The bus across hosts: Redis pub/sub (two channels per replica: its own and everyone's) and expiring keys.

Keys and channels start with `prefix` (config `redis_prefix`, default ``stile:``); pub/sub channels are
global to a Redis server whatever the db, so the prefix also keeps two deployments on one Redis apart.
Commands go over `RedisLite` (one pipelined connection, a deadline each); the subscription has its own
connection (`RedisSubscriber`). `up` is the subscription's state: while it is down this replica cannot be
reached, and every operation that needs Redis fails fast with `BusUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from stile.bus import BusUnavailable, Handler, Message
from stile.stores.redis_lite import RedisLite, RedisReplyError, RedisSubscriber, RedisUnavailable

log = logging.getLogger("stile.bus")
_MARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
local n_add = tonumber(ARGV[2])
for i = 3, 2 + n_add do redis.call('ZADD', KEYS[1], string.format('%.6f', now + ttl), ARGV[i]) end
for i = 3 + n_add, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000) + 1000)
return redis.call('ZCARD', KEYS[1])
"""


class RedisBus:
    kind = "redis"
    shared = True

    def __init__(self, url: str, replica: str, *, prefix: str = "stile:", timeout: float = 0.5) -> None:
        self.url = url
        self.replica = replica
        self.prefix = prefix
        self.client = RedisLite(url, timeout=timeout, retry_seconds=0.5)
        self._own = f"{prefix}bus.r.{replica}"
        self._all = f"{prefix}bus.all"
        self._handlers: list[Handler] = []
        self._sub = RedisSubscriber(url, [self._own, self._all], self._on_message, timeout=timeout,
                                    retry_seconds=0.5)
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._sub.up

    def listen(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        """Subscribe in the background; wait at most a second for it (else start degraded)."""
        self._task = asyncio.create_task(self._sub.run(), name="bus-redis-sub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sub.subscribed.wait(), 1.0)
        if not self._sub.up:
            log.warning("redis bus %s:%s is down: running degraded until it is back",
                        self.client.host, self.client.port)

    async def aclose(self) -> None:
        if self._task is not None:
            self._sub.stopped = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        await self.client.aclose()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(msg, dict):
            for handler in self._handlers:
                handler(msg)

    async def _cmd(self, *args: object) -> object:
        try:
            return await self.client.command(*args)
        except (RedisUnavailable, RedisReplyError) as exc:
            raise BusUnavailable(str(exc)) from None

    async def send(self, replica: str | None, msg: Message) -> int:
        channel = self._all if replica is None else f"{self.prefix}bus.r.{replica}"
        got = await self._cmd("PUBLISH", channel, orjson.dumps(msg))
        return int(got) if isinstance(got, int) else 0

    async def claim(self, key: str, ttl: float) -> bool:
        got = await self._cmd("SET", self.prefix + key, self.replica, "NX", "PX", max(1, int(ttl * 1000)))
        return got == "OK"

    async def set_update(self, key: str, member: str, present: bool, ttl: float) -> None:
        full = self.prefix + key
        try:
            await asyncio.gather(self.client.command("SADD" if present else "SREM", full, member),
                                 self.client.command("PEXPIRE", full, max(1, int(ttl * 1000))))
        except (RedisUnavailable, RedisReplyError) as exc:
            raise BusUnavailable(str(exc)) from None

    async def set_members(self, key: str) -> set[str]:
        got = await self._cmd("SMEMBERS", self.prefix + key)
        return {m.decode() for m in got if isinstance(m, bytes)} if isinstance(got, list) else set()

    async def mark(self, key: str, add: list[str], remove: list[str], ttl: float) -> int:
        try:
            got = await self.client.eval(_MARK, [self.prefix + key], [f"{ttl:.3f}", len(add), *add, *remove])
        except (RedisUnavailable, RedisReplyError) as exc:
            raise BusUnavailable(str(exc)) from None
        return int(got) if isinstance(got, int) else 0
