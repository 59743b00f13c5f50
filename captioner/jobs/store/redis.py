"""The job store in Redis: consumers on several machines; each write is one Lua script
(see ``captioner.jobs.store.base``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from captioner.errors import ConfigError
from captioner.jobs.store.base import (
    PURGE_BATCH,
    WEBHOOK_STALE_S,
    Claim,
    JobStore,
    Plan,
    _counts,
    _dumps,
    _record,
    _suspect_alts,
    holder,
)

# --- Redis ----------------------------------------------------------------------------------

# Every script reads the clock of the Redis server (TIME), so the leases of consumers on
# different machines are compared on one clock. Keys are built inside the scripts from the
# prefix and the job id: fine on one Redis server (or a primary with replicas), not on a
# Redis Cluster.
_LUA_HEAD = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function active(jk)
  local st = redis.call('HGET', jk, 'state')
  return st == 'queued' or st == 'running'
end
local function finish(p, id, state, t, code, msg)
  local jk = p .. id
  redis.call('HSET', jk, 'state', state, 'finished', t)
  if code then redis.call('HSET', jk, 'error_code', code, 'error_message', msg) end
  redis.call('SREM', p .. 'active', id)
  redis.call('ZADD', p .. 'finished', t, id)
  if redis.call('HGET', jk, 'webhook') == '1' then
    redis.call('HSET', jk, 'webhook_state', 'pending')
    redis.call('ZADD', p .. 'webhooks', t, id)
  end
end
"""

# A holder's jobs are a set (jobs-of:<holder>, see ``holder``): a job joins it here, leaves
# it when deleted, and one that has ended is dropped here, when its holder next creates one
# (so the set holds about what is active, and counting it costs that much).
_CREATE = """
local p, id, spec, idem, fp, hook = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local owner, max_active = ARGV[7], tonumber(ARGV[8])
if idem ~= '' then
  local existing = redis.call('GET', p .. 'idem:' .. idem)
  -- a key whose job was deleted (or lost) is free again
  if existing and redis.call('EXISTS', p .. existing) == 1 then return {existing, 0} end
end
local mine = p .. 'jobs-of:' .. owner
local n = 0
for _, other in ipairs(redis.call('SMEMBERS', mine)) do
  if active(p .. other) then n = n + 1 else redis.call('SREM', mine, other) end
end
if max_active > 0 and n >= max_active then return {'', 0} end
redis.call('SADD', mine, id)
local t = now()
redis.call('HSET', p .. id, 'id', id, 'spec', spec, 'fingerprint', fp, 'state', 'queued',
  'created', t, 'planned', 0, 'activity', t, 'woken', 0, 'webhook', hook)
redis.call('SADD', p .. 'active', id)
if idem ~= '' then
  redis.call('HSET', p .. id, 'idem', idem)
  redis.call('SET', p .. 'idem:' .. idem, id)
end
return {id, 1}
"""

_CLAIM_PLAN = """
local p, id, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local jk = p .. id
if not active(jk) or redis.call('HGET', jk, 'planned') == '1' then return 0 end
local t = now()
if tonumber(redis.call('HGET', jk, 'plan_lease') or '0') > t then return 0 end
redis.call('HSET', jk, 'plan_owner', owner, 'plan_lease', t + lease, 'state', 'running',
  'activity', t)
redis.call('HSETNX', jk, 'started', t)
return redis.call('HINCRBY', jk, 'plan_attempts', 1)
"""

# ARGV: p, id, total, limited, done, failed, skipped, n_pages, n_chunks, verdicts JSON, then
# n_pages pairs (page number, metadata JSON), n_pages pairs (page number, JSON with the HTML
# or ""), n_chunks chunk JSONs, then seq/row pairs.
_COMMIT_PLAN = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. id
if not active(jk) then return 'inactive' end
if redis.call('HGET', jk, 'planned') == '1' then return 'duplicate' end
local npages, nchunks = tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 11
for _ = 1, npages do
  redis.call('HSET', jk .. ':pagemeta', ARGV[i], ARGV[i + 1]); i = i + 2
end
for _ = 1, npages do
  if ARGV[i + 1] ~= '' then redis.call('HSET', jk .. ':pages', ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
for n = 0, nchunks - 1 do
  redis.call('HSET', jk .. ':chunks', n, ARGV[i]); i = i + 1
  redis.call('ZADD', jk .. ':open', 0, n)
end
while i < #ARGV do
  redis.call('HSETNX', jk .. ':rows', ARGV[i], ARGV[i + 1]); i = i + 2
end
local t = now()
redis.call('HSET', jk, 'planned', 1, 'total', ARGV[3], 'limited', ARGV[4], 'done', ARGV[5],
  'failed', ARGV[6], 'skipped', ARGV[7], 'chunks', nchunks, 'chunks_done', 0, 'activity', t,
  'verdicts', ARGV[10])
redis.call('HDEL', jk, 'plan_owner', 'plan_lease')
if nchunks == 0 then finish(p, id, 'done', t); return 'finished' end
return 'recorded'
"""

_FAIL = """
local p, id, code, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not active(p .. id) then return 0 end
finish(p, id, 'failed', now(), code, msg)
return 1
"""

_CANCEL = """
local p, id = ARGV[1], ARGV[2]
if not active(p .. id) then return 0 end
finish(p, id, 'cancelled', now())
return 1
"""

_CLAIM_CHUNK = """
local p, id, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local jk = p .. id
if not active(jk) or redis.call('HGET', jk, 'planned') ~= '1' then return false end
local t = now()
if tonumber(redis.call('HGET', jk, 'paused_until') or '0') > t then return false end
local found = redis.call('ZRANGEBYSCORE', jk .. ':open', '-inf', t, 'LIMIT', 0, 1)
if #found == 0 then return false end
local n = found[1]
redis.call('ZADD', jk .. ':open', t + lease, n)
redis.call('HSET', jk .. ':owner', n, owner)
local attempts = redis.call('HINCRBY', jk .. ':attempts', n, 1)
redis.call('HSET', jk, 'activity', t)
local paid = redis.call('SISMEMBER', jk .. ':paid', n)
return {n, redis.call('HGET', jk .. ':chunks', n), attempts, paid}
"""

# ARGV: p, id, n, owner, then (for a split) the items paid for and the others, as JSON.
_MARK_PAID = """
local p, id, n, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. id
if redis.call('HGET', jk .. ':owner', n) ~= owner then return 0 end
if #ARGV >= 6 then
  local last = redis.call('HINCRBY', jk, 'chunks', 1) - 1
  redis.call('HSET', jk .. ':chunks', n, ARGV[5], last, ARGV[6])
  redis.call('ZADD', jk .. ':open', 0, last)
end
redis.call('SADD', jk .. ':paid', n)
return 1
"""

_PAUSE = """
local p, id, wait = ARGV[1], ARGV[2], tonumber(ARGV[3])
local jk = p .. id
if not active(jk) then return 0 end
local until_t = now() + wait
if tonumber(redis.call('HGET', jk, 'paused_until') or '0') < until_t then
  redis.call('HSET', jk, 'paused_until', until_t)
end
return 1
"""

# ARGV: p, id, n, done, failed, skipped, suspect alts, then seq/row pairs.
_COMPLETE = """
local p, id, n = ARGV[1], ARGV[2], ARGV[3]
local jk = p .. id
if redis.call('HEXISTS', jk .. ':chunks', n) == 0 then return 'duplicate' end
if redis.call('SADD', jk .. ':done', n) == 0 then return 'duplicate' end
for i = 8, #ARGV, 2 do redis.call('HSETNX', jk .. ':rows', ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', jk .. ':open', n)
redis.call('HDEL', jk .. ':owner', n)
redis.call('HINCRBY', jk, 'done', ARGV[4])
redis.call('HINCRBY', jk, 'failed', ARGV[5])
redis.call('HINCRBY', jk, 'skipped', ARGV[6])
if ARGV[7] ~= '0' then redis.call('HINCRBY', jk, 'suspect_alts', ARGV[7]) end
local chunks_done = redis.call('HINCRBY', jk, 'chunks_done', 1)
local t = now()
redis.call('HSET', jk, 'activity', t)
if active(jk) and redis.call('HGET', jk, 'planned') == '1'
    and chunks_done >= tonumber(redis.call('HGET', jk, 'chunks')) then
  finish(p, id, 'done', t)
  return 'finished'
end
return 'recorded'
"""

_RELEASE = """
local p, id, unit, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. id
if unit == 'plan' then
  if redis.call('HGET', jk, 'plan_owner') == owner and redis.call('HGET', jk, 'planned') ~= '1'
      and redis.call('HDEL', jk, 'plan_lease') == 1 then
    redis.call('HINCRBY', jk, 'plan_attempts', -1)
  end
elseif redis.call('HGET', jk .. ':owner', unit) == owner then
  redis.call('HDEL', jk .. ':owner', unit)
  redis.call('ZADD', jk .. ':open', 'XX', 0, unit)
  redis.call('HINCRBY', jk .. ':attempts', unit, -1)
end
return 1
"""

# ARGV: p, owner, lease, then job/unit pairs.
_RENEW = """
local p, owner, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = now()
for i = 4, #ARGV, 2 do
  local jk, unit = p .. ARGV[i], ARGV[i + 1]
  if unit == 'plan' then
    if redis.call('HGET', jk, 'plan_owner') == owner and redis.call('HGET', jk, 'planned') ~= '1'
    then redis.call('HSET', jk, 'plan_lease', t + lease) end
  elseif redis.call('HGET', jk .. ':owner', unit) == owner then
    redis.call('ZADD', jk .. ':open', 'XX', t + lease, unit)
  end
  if redis.call('EXISTS', jk) == 1 then redis.call('HSET', jk, 'activity', t) end
end
return 1
"""

# The lease test reads the last wake-up as stored ('(' .. the string): a Lua number turned
# into a string keeps only 14 digits.
_SWEEP = """
local p, lease, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
local quiet = t - lease
local jobs = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'active')) do
  local jk = p .. id
  if not active(jk) then
    redis.call('SREM', p .. 'active', id)
  else
    local woken_s = redis.call('HGET', jk, 'woken') or '0'
    local woken = tonumber(woken_s)
    local planned = redis.call('HGET', jk, 'planned') == '1'
    local plan_lease = tonumber(redis.call('HGET', jk, 'plan_lease') or '0')
    local paused_until = tonumber(redis.call('HGET', jk, 'paused_until') or '0')
    -- a lease ran out since the last wake-up: its consumer died
    local wake
    if planned then
      wake = redis.call('ZCOUNT', jk .. ':open', '(' .. woken_s, t) > 0
    else
      wake = plan_lease > woken and plan_lease <= t
    end
    -- a pause ran out since the last wake-up: the owner's budget is back
    if paused_until > woken and paused_until <= t then wake = true end
    -- claimable work that nothing touched for a lease: a wake-up was lost
    if not wake and woken <= quiet and paused_until <= t
        and tonumber(redis.call('HGET', jk, 'activity') or '0') <= quiet then
      if planned then
        wake = redis.call('ZCOUNT', jk .. ':open', '-inf', t) > 0
      else
        wake = plan_lease <= t
      end
    end
    if wake then
      redis.call('HSET', jk, 'woken', t)
      table.insert(jobs, id)
    end
  end
end
local hooks = redis.call('ZRANGEBYSCORE', p .. 'webhooks', '-inf', t - stale)
for _, id in ipairs(hooks) do redis.call('ZADD', p .. 'webhooks', t, id) end
return {jobs, hooks}
"""

_SET_WEBHOOK = """
local p, id, state = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. id) == 0 then return 0 end  -- deleted meanwhile: write nothing
redis.call('HSET', p .. id, 'webhook_state', state)
if state == 'pending' then
  redis.call('ZADD', p .. 'webhooks', now(), id)
else
  redis.call('ZREM', p .. 'webhooks', id)
end
return 1
"""

# Deleting a job: every key of it, its entries in the indexes, its idempotency key (only if
# that still points at this job). Never an active job. Idempotent: deleting twice, or a job
# half gone, only removes what is left.
_LUA_DELETE = """
local function delete_job(p, id)
  local jk = p .. id
  local st = redis.call('HGET', jk, 'state')
  if st == 'queued' or st == 'running' then return 0 end
  local idem = redis.call('HGET', jk, 'idem')
  if idem and redis.call('GET', p .. 'idem:' .. idem) == id then
    redis.call('DEL', p .. 'idem:' .. idem)
  end
  local spec = redis.call('HGET', jk, 'spec')
  if spec then
    local ok, decoded = pcall(cjson.decode, spec)
    local holder = ''  -- as jobstore.holder(spec): the client, else the owner
    if ok and type(decoded) == 'table' then
      for _, name in ipairs({'client', 'owner'}) do
        local v = decoded[name]
        if holder == '' and type(v) == 'string' and v ~= '' then holder = v end
      end
    end
    redis.call('SREM', p .. 'jobs-of:' .. holder, id)
  end
  redis.call('UNLINK', jk, jk .. ':chunks', jk .. ':open', jk .. ':owner', jk .. ':attempts',
    jk .. ':done', jk .. ':paid', jk .. ':rows', jk .. ':pages', jk .. ':pagemeta')
  redis.call('SREM', p .. 'active', id)
  redis.call('ZREM', p .. 'webhooks', id)
  redis.call('ZREM', p .. 'finished', id)
  if st then return 1 end
  return 0
end
"""

_DELETE = """
return delete_job(ARGV[1], ARGV[2])
"""

# ARGV: p, retention, batch size, now ('' = the server's clock).
_PURGE = """
local p, retention, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
if ARGV[4] ~= '' then t = tonumber(ARGV[4]) end
local ids = redis.call('ZRANGEBYSCORE', p .. 'finished', '-inf', t - retention, 'LIMIT', 0, limit)
local gone = {}
for _, id in ipairs(ids) do
  if delete_job(p, id) == 1 then table.insert(gone, id) end
  redis.call('ZREM', p .. 'finished', id)  -- also an entry of a job that is active again
end
return {#ids, gone}
"""


class RedisJobStore(JobStore):
    """Jobs in Redis, shared by consumers on any number of machines.

    Keys, under ``altcap:jobs:``: ``<id>`` (a hash: state, counts, verdict counts as planned
    and ``suspect_alts`` found since, timestamps), and for each
    job ``<id>:chunks`` (items), ``<id>:open`` (a sorted set of unfinished chunks scored by
    lease expiry, 0 when pending), ``<id>:owner``, ``<id>:attempts``, ``<id>:done`` (chunk
    marks), ``<id>:paid`` (chunks charged to the rate limit), ``<id>:rows`` (seq -> row),
    ``<id>:pages`` and ``<id>:pagemeta``; plus ``active`` (ids of unfinished jobs),
    ``finished`` (ended jobs by end time, for the retention sweep), ``webhooks``,
    ``idem:<key>`` and ``jobs-of:<holder>`` (an API key's or a client address's jobs, for its
    cap on active jobs). Each operation is one Lua script, which Redis runs atomically. Use a
    Redis that persists (AOF ``appendfsync everysec`` or better) if jobs must survive a
    restart of Redis itself.
    """

    def __init__(self, url: str, *, prefix: str = "altcap:jobs:") -> None:
        import redis

        self.prefix = prefix
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL for the job store: {exc}") from exc
        register = self._client.register_script
        self._create = register(_LUA_HEAD + _CREATE)
        self._claim_plan = register(_LUA_HEAD + _CLAIM_PLAN)
        self._commit_plan = register(_LUA_HEAD + _COMMIT_PLAN)
        self._fail = register(_LUA_HEAD + _FAIL)
        self._cancel = register(_LUA_HEAD + _CANCEL)
        self._claim_chunk = register(_LUA_HEAD + _CLAIM_CHUNK)
        self._mark_paid = register(_LUA_HEAD + _MARK_PAID)
        self._pause = register(_LUA_HEAD + _PAUSE)
        self._complete = register(_LUA_HEAD + _COMPLETE)
        self._release = register(_LUA_HEAD + _RELEASE)
        self._renew = register(_LUA_HEAD + _RENEW)
        self._sweep = register(_LUA_HEAD + _SWEEP)
        self._set_webhook = register(_LUA_HEAD + _SET_WEBHOOK)
        self._delete = register(_LUA_HEAD + _LUA_DELETE + _DELETE)
        self._purge = register(_LUA_HEAD + _LUA_DELETE + _PURGE)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def create(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        idem: str | None,
        fingerprint: str,
        max_active: int = 0,
    ) -> tuple[str, bool]:
        hook = "1" if spec.get("webhook") else "0"
        args = [self.prefix, job_id, _dumps(spec), idem or "", fingerprint, hook]
        args += [holder(spec), max_active]
        found, created = self._create(args=args)
        return self._text(found), bool(created)

    def find_idempotent(self, idem: str) -> str | None:
        found = self._client.get(self.prefix + "idem:" + idem)
        return None if found is None else self._text(found)

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self._client.hgetall(self.prefix + job_id)
        if not raw:
            return None
        return _record({self._text(k): self._text(v) for k, v in raw.items()})

    def claim_plan(self, job_id: str, owner: str, lease_s: float) -> int:
        return int(self._claim_plan(args=[self.prefix, job_id, owner, lease_s]) or 0)

    def commit_plan(self, job_id: str, plan: Plan) -> str:
        done, failed, skipped = _counts(plan.rows)
        args: list[Any] = [self.prefix, job_id, plan.total, int(plan.limited)]
        args += [done, failed, skipped, len(plan.pages), len(plan.chunks), _dumps(plan.verdicts)]
        for page in plan.pages:
            meta = {"n": page["n"], "url": page["url"], "final_url": page.get("final_url")}
            args += [page["n"], _dumps({**meta, "error": page.get("error")})]
        for page in plan.pages:
            html = page.get("html")
            meta = {"n": page["n"], "url": page["url"], "final_url": page.get("final_url")}
            args += [page["n"], _dumps({**meta, "html": html}) if html is not None else ""]
        args += [_dumps(items) for items in plan.chunks]
        for seq, row in plan.rows.items():
            args += [seq, _dumps(row)]
        return self._text(self._commit_plan(args=args))

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return bool(self._fail(args=[self.prefix, job_id, code, message]))

    def cancel(self, job_id: str) -> bool:
        return bool(self._cancel(args=[self.prefix, job_id]))

    def claim_chunk(self, job_id: str, owner: str, lease_s: float) -> Claim | None:
        found = self._claim_chunk(args=[self.prefix, job_id, owner, lease_s])
        if not found:
            return None
        n, items, attempts, paid = found
        return Claim(int(self._text(n)), json.loads(self._text(items)), int(attempts), bool(paid))

    def mark_paid(
        self, job_id: str, n: int, owner: str, split: tuple[list[Any], list[Any]] | None = None
    ) -> bool:
        args: list[Any] = [self.prefix, job_id, n, owner]
        if split is not None:
            args += [_dumps(split[0]), _dumps(split[1])]
        return bool(self._mark_paid(args=args))

    def pause(self, job_id: str, wait_s: float) -> None:
        self._pause(args=[self.prefix, job_id, wait_s])

    def complete_chunk(self, job_id: str, n: int, rows: Mapping[int, Mapping[str, Any]]) -> str:
        args: list[Any] = [self.prefix, job_id, n, *_counts(rows), _suspect_alts(rows)]
        for seq, row in rows.items():
            args += [seq, _dumps(row)]
        return self._text(self._complete(args=args))

    def release(self, job_id: str, unit: int | str, owner: str) -> None:
        self._release(args=[self.prefix, job_id, unit, owner])

    def renew(self, owner: str, units: Sequence[tuple[str, int | str]], lease_s: float) -> None:
        if not units:
            return
        args: list[Any] = [self.prefix, owner, lease_s]
        for job_id, unit in units:
            args += [job_id, unit]
        self._renew(args=args)

    def rows(self, job_id: str) -> list[dict[str, Any]]:
        raw = self._client.hgetall(f"{self.prefix}{job_id}:rows")
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def pages(self, job_id: str) -> list[dict[str, Any]]:
        raw = self._client.hgetall(f"{self.prefix}{job_id}:pagemeta")
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def page_html(self, job_id: str, n: int) -> dict[str, Any] | None:
        raw = self._client.hget(f"{self.prefix}{job_id}:pages", str(n))
        return None if raw is None else json.loads(raw)

    def sweep(self, lease_s: float) -> tuple[list[str], list[str]]:
        jobs, hooks = self._sweep(args=[self.prefix, lease_s, WEBHOOK_STALE_S])
        return [self._text(j) for j in jobs], [self._text(h) for h in hooks]

    def set_webhook(self, job_id: str, state: str) -> None:
        self._set_webhook(args=[self.prefix, job_id, state])

    def delete(self, job_id: str) -> bool:
        return bool(self._delete(args=[self.prefix, job_id]))

    def purge(self, retention_s: float, *, now: float | None = None) -> list[str]:
        if retention_s <= 0:
            return []
        deleted: list[str] = []
        while True:
            args = [self.prefix, retention_s, PURGE_BATCH, "" if now is None else now]
            seen, gone = self._purge(args=args)
            deleted += [self._text(job_id) for job_id in gone]
            if int(seen) < PURGE_BATCH:
                return deleted
