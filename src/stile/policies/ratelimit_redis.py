"""GCRA in Redis: one atomic Lua script checks every limit of a call and admits all of them or none.

The script reads Redis's own clock (`TIME`), so workers and replicas with skewed clocks share one
timeline. TATs are microsecond integers under `<key_prefix><limit>:<subject>`, each expiring once its
TAT has passed (an expired key behaves exactly like a new one). One round trip per call; a Redis that is
down or slow raises `RedisUnavailable` within the configured socket timeout (the policy's
`on_store_error` decides what happens then).
"""

from __future__ import annotations

from collections.abc import Sequence

from stile.policies.gcra import Bucket
from stile.stores.redis_lite import RedisLite, RedisUnavailable

# KEYS: one per limit; ARGV: interval_us, capacity_us per key. Returns 0 (admitted, every TAT moved) or
# {index, wait_us} for the first limit that refuses (nothing moved).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local news = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  local over = new - now - capacity
  if over > 0 then return {i - 1, over} end
  news[i] = new
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%d', news[i]), 'PX', math.floor((news[i] - now) / 1000) + 1000)
end
return 0
"""


class RedisGcra:
    def __init__(self, url: str, timeout: float, key_prefix: str) -> None:
        self.client = RedisLite(url, timeout=timeout)
        self.prefix = key_prefix

    async def acquire(self, checks: Sequence[tuple[str, Bucket]]) -> tuple[int, int]:
        """(index of the refusing check or -1, nanoseconds to wait); `RedisUnavailable` when Redis is not there."""
        keys = [self.prefix + key for key, _ in checks]
        args: list[int] = []
        for _, bucket in checks:
            interval_us = -(-bucket.interval_ns // 1000)  # rounded up: never looser than the rate
            args += [interval_us, interval_us * (bucket.capacity_ns // bucket.interval_ns)]
        reply = await self.client.eval(SCRIPT, keys, args)
        if reply == 0:
            return -1, 0
        if isinstance(reply, list) and len(reply) == 2 and all(isinstance(v, int) for v in reply):
            return reply[0], reply[1] * 1000
        raise RedisUnavailable(f"unexpected reply from the rate-limit script: {reply!r:.80}")

    async def aclose(self) -> None:
        await self.client.aclose()
