"""The Lua scripts of the Redis state backend: one atomic script per operation.

Rolling windows are a sorted set (member: the reservation's id, score: when it was
taken) plus a hash (id → amount), so a release settles its *own* entry by id. Limiter
scripts read the server's clock (``TIME``), so every process and machine agrees on it;
spend scripts take the caller's wall clock (the budget's time base). Numbers travel as
strings (Lua would truncate floats it returns).
"""

from __future__ import annotations

__all__ = [
    "BREAKER_OPEN",
    "BREAKER_READ",
    "COST_RECORD",
    "KV_GET",
    "KV_PUT",
    "LIMITER_ACQUIRE",
    "LIMITER_PAUSE",
    "LIMITER_RELEASE",
    "LIMITER_RENEW",
    "SPEND_ADJUST",
    "SPEND_RESERVE",
    "SPEND_TOTAL",
]

# Shared helpers: expire a window, read its total, find when `n` more fit, add, change.
# Each window keeps its running total in the hash's `_total` field, so an acquire costs
# O(entries that expire) rather than O(entries in the window).
_WINDOW = """
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function expire(zkey, hkey, now, window)
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - window)
  if #old > 0 then
    local amounts = redis.call('HMGET', hkey, unpack(old))
    local gone = 0
    for i = 1, #amounts do gone = gone + (tonumber(amounts[i]) or 0) end
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
    redis.call('HDEL', hkey, unpack(old))
    redis.call('HINCRBYFLOAT', hkey, '_total', -gone)
  end
  if redis.call('ZCARD', zkey) == 0 then redis.call('HDEL', hkey, '_total') end
end

local function used(zkey, hkey)
  return math.max(0, tonumber(redis.call('HGET', hkey, '_total') or '0'))
end

-- seconds until `n` more fit under `limit` (0 now); the window is already expired
local function wait_for(zkey, hkey, limit, n, now, window)
  local excess = used(zkey, hkey) + n - limit
  if excess <= 0 then return 0 end
  local start = 0
  while true do
    local entries = redis.call('ZRANGE', zkey, start, start + 63, 'WITHSCORES')
    if #entries == 0 then return window end
    for i = 1, #entries, 2 do
      excess = excess - (tonumber(redis.call('HGET', hkey, entries[i])) or 0)
      if excess <= 1e-9 then return tonumber(entries[i + 1]) + window - now end
    end
    start = start + 64
  end
end

local function add(zkey, hkey, id, amount, at, ttl)
  redis.call('ZADD', zkey, at, id)
  redis.call('HSET', hkey, id, amount)
  redis.call('HINCRBYFLOAT', hkey, '_total', amount)
  redis.call('PEXPIRE', zkey, ttl)
  redis.call('PEXPIRE', hkey, ttl)
end

-- lower entry `id` by `by` (never below 0); nothing when it already left the window
local function refund(hkey, id, by)
  local mine = tonumber(redis.call('HGET', hkey, id) or '-1')
  if mine < 0 then return end
  local part = math.min(mine, by)
  redis.call('HSET', hkey, id, tostring(mine - part))
  redis.call('HINCRBYFLOAT', hkey, '_total', -part)
end
"""

#: KEYS: rpm zset, rpm hash, tpm zset, tpm hash, slots zset, pause
#: ARGV: rpm limit, tpm limit, slot limit (-1: none), requests, tokens, id, lease, window
#: -> {1, now, requests left, tokens left} | {0, wait (-1: only a slot is missing)}
LIMITER_ACQUIRE = (
    _WINDOW
    + """
local now = server_now()
local rpm, tpm, slots = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local requests, tokens, id = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local lease, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local wait = 0
local paused = tonumber(redis.call('GET', KEYS[6]) or '0')
if paused > now then wait = paused - now end
if rpm >= 0 then
  expire(KEYS[1], KEYS[2], now, window)
  if requests > 0 then
    wait = math.max(wait, wait_for(KEYS[1], KEYS[2], rpm, requests, now, window))
  end
end
if tpm >= 0 then
  expire(KEYS[3], KEYS[4], now, window)
  if tokens > 0 then
    wait = math.max(wait, wait_for(KEYS[3], KEYS[4], tpm, tokens, now, window))
  end
end
if wait > 0 then return {0, tostring(wait)} end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
if slots >= 0 and requests > 0 and redis.call('ZCARD', KEYS[5]) >= slots then
  return {0, '-1'}
end
local ttl = math.floor((window + lease) * 1000)
if rpm >= 0 and requests > 0 then add(KEYS[1], KEYS[2], id, requests, now, ttl) end
if tpm >= 0 and tokens > 0 then add(KEYS[3], KEYS[4], id, tokens, now, ttl) end
if requests > 0 then
  redis.call('ZADD', KEYS[5], now + lease, id)
  redis.call('PEXPIRE', KEYS[5], math.floor(lease * 1000) + 1000)
end
local rpm_left, tpm_left = -1, -1
if rpm >= 0 then rpm_left = rpm - used(KEYS[1], KEYS[2]) end
if tpm >= 0 then tpm_left = tpm - used(KEYS[3], KEYS[4]) end
return {1, tostring(now), tostring(rpm_left), tostring(tpm_left)}
"""
)

#: KEYS: tpm zset, tpm hash, slots zset; ARGV: id, reserved tokens, actual (-1: unknown),
#: window. Frees the slot; the permit's own TPM entry becomes its real usage.
LIMITER_RELEASE = (
    _WINDOW
    + """
local now = server_now()
local id, reserved, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[4])
redis.call('ZREM', KEYS[3], id)
if actual >= 0 and actual ~= reserved then
  if actual < reserved then
    refund(KEYS[2], id, reserved - actual)
  else
    add(KEYS[1], KEYS[2], id .. ':over', actual - reserved, now, math.floor(window * 2000))
  end
end
return 1
"""
)

#: KEYS: slots zset; ARGV: lease, ids... -> how many leases were renewed
LIMITER_RENEW = (
    _WINDOW
    + """
local now = server_now()
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], math.floor(lease * 1000) + 1000) end
return renewed
"""
)

#: KEYS: pause; ARGV: seconds -> admit nothing before server now + seconds
LIMITER_PAUSE = (
    _WINDOW
    + """
local until_ = server_now() + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', math.floor(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""
)

#: KEYS: open-until; ARGV: seconds -> the breaker is open fleet-wide until then
BREAKER_OPEN = LIMITER_PAUSE

#: KEYS: open-until keys... -> seconds each stays open (0: closed)
BREAKER_READ = (
    _WINDOW
    + """
local now = server_now()
local out = {}
for i = 1, #KEYS do
  local until_ = tonumber(redis.call('GET', KEYS[i]) or '0')
  out[i] = tostring(math.max(0, until_ - now))
end
return out
"""
)

#: KEYS: zset, hash; ARGV: amount, limit (-1: none), window, now, id -> 1 reserved | 0
SPEND_RESERVE = (
    _WINDOW
    + """
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, now, id = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
expire(KEYS[1], KEYS[2], now, window)
if limit >= 0 and used(KEYS[1], KEYS[2]) + amount > limit then return 0 end
add(KEYS[1], KEYS[2], id, amount, now, math.floor(window * 1000) + 60000)
return 1
"""
)

#: KEYS: zset, hash; ARGV: delta, now, window, own id ('' if none), debit id
#: A negative delta comes out of the caller's own reservation; a positive one is new
#: spend at now.
SPEND_ADJUST = (
    _WINDOW
    + """
local delta, now, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if delta < 0 then
  if ARGV[4] ~= '' then refund(KEYS[2], ARGV[4], -delta) end
elseif delta > 0 then
  add(KEYS[1], KEYS[2], ARGV[5], delta, now, math.floor(window * 1000) + 60000)
end
return 1
"""
)

#: KEYS: zset, hash; ARGV: window, now, amount, limit -> {total, earliest room (-1 never)}
SPEND_TOTAL = (
    _WINDOW
    + """
local window, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local amount, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
expire(KEYS[1], KEYS[2], now, window)
local total = used(KEYS[1], KEYS[2])
local room = now
if amount > limit then
  room = -1
elseif total + amount > limit then
  room = now + wait_for(KEYS[1], KEYS[2], limit, amount, now, window)
end
return {tostring(total), tostring(room)}
"""
)

#: KEYS: cost hash of a deployment; ARGV: hour (end, unix seconds), amount, ttl (s)
COST_RECORD = """
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


#: KEYS: a value's key; ARGV: the value, its time to live (ms)
KV_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

#: KEYS: a value's key; returns {value, remaining ms} or false when absent or expired
KV_GET = """
local value = redis.call('GET', KEYS[1])
if not value then return false end
return {value, tostring(redis.call('PTTL', KEYS[1]))}
"""
