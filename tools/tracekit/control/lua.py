"""The control plane's atomic steps, as Redis Lua scripts (one script = one atomic step).

Every state change of a task between queues, and the capacity/slot/run_count accounting that goes with
it, happens inside one script, so no crash point loses, duplicates or leaks anything:

    place      head of q:pending -> q:<node> (+ ts_dispatch, node in the payload), cap/run_count/slot
    register   a worker (re)starts: reconcile its own keys, requeue what its previous instance ran
    beat       heartbeat refresh; tells a worker its node was recovered meanwhile (re-register)
    complete   running:<node> -> done/failed, capacity back; FENCED unless this exact payload (same
               trace_id and attempt) is still in this node's running list
    reap       every registered node without heartbeat: its running and placed tasks go back to the
               head of q:pending with attempt+1 (or failed after max attempts); its keys leave the pool
    leave      a worker stops cleanly: placed-not-started tasks back to the head, keys removed
    drain      a worker starts stopping: no more placements on it, placed-not-started tasks back to the head
    own        the one worker of a node: owner token (SET NX with TTL, refreshed by the heartbeat)

Key names come from :class:`tracekit.core.keys.Keys` (rendered into the script text, so one prefix = one
script set). Records that must reach a log file (placements; controller ``failed`` events, and the ``requeue``
and ``release`` records that give the trace its retry submissions and slot ends) are added to
the ``controller:log`` stream in the same atomic step; the scheduler drains that stream into the files
(each line carries its stream id, so a crash never loses or repeats a line).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import redis

from tracekit.control.payload import lua_constants
from tracekit.control.placement import WEIGHER_TABLE
from tracekit.core.keys import Keys

_MARK = "\x01NODE\x01"


def _lua_str(s: str) -> str:
    """A Lua string literal for any text (decimal escapes for anything but safe characters)."""
    return '"' + "".join(chr(b) if chr(b).isalnum() or chr(b) in ":_-.@" else f"\\{b}" for b in s.encode()) + '"'


def prelude(keys: Keys, metrics: str = "") -> str:
    """Every definition the steps may use (key names, payload gate, weigher metrics, index and record helpers);
    each script takes only the ones it needs (:func:`script_body`)."""
    fixed = {name: getattr(keys, name) for name in ("pending", "slots", "nodes", "wake", "done", "failed", "events",
                                                   "controller_log", "config", "trace_ids")}
    per_node = ("queue", "running", "cap", "cap_total", "run_count", "node_info", "heartbeat")
    lines = ["local K = {}"]
    lines += [f"K.{k} = {_lua_str(v)}" for k, v in fixed.items()]
    for name in per_node:
        pre, post = getattr(keys, name)(_MARK).split(_MARK)
        lines.append(f"K.{name} = function(n) return {_lua_str(pre)} .. n .. {_lua_str(post)} end")
    for name in ("free", "cap", "slots", "big", "active"):
        lines.append(f"K.idx_{name} = {_lua_str(keys.index(name))}")
    pre, post = keys.index(_MARK).split(_MARK)
    lines.append(f"K.idx_w = function(w, o) return {_lua_str(pre + 'w:')} .. w .. ':' .. o .. {_lua_str(post)} end")
    return "\n".join(lines) + "\n" + gate_lua() + (metrics or weigher_lua()) + INDEX + _COMMON


def gate_lua() -> str:
    """The payload gate in Lua (:data:`GATE`) with the limits of :mod:`tracekit.control.payload` filled in."""
    body = GATE
    for name, value in lua_constants().items():
        body = body.replace(f"@{name}@", str(int(value)))
    return body


# The payload gate: the rules of tracekit.control.payload (see its docstring), in the same order, with the same
# limits (@NAME@ is filled from payload.lua_constants). gate(raw) returns the decoded table, or nil, rule, reason
# and the trace_id when it can be read. It never raises: every script checks a payload before it pops or encodes it.
GATE = r"""
local G_MAX_BYTES, G_MAX_DEPTH, G_MAX_ID, G_MAX_PATH = @MAX_BYTES@, @MAX_DEPTH@, @MAX_ID@, @MAX_PATH@
local G_UNITS_LO, G_UNITS_HI, G_ATTEMPT_LO, G_ATTEMPT_HI = @UNITS_LO@, @UNITS_HI@, @ATTEMPT_LO@, @ATTEMPT_HI@
local G_TS_LO, G_TS_HI = @TS_LO@, @TS_HI@
local G_CPUSET_MAX, G_QUOTA_HI, G_WEIGHT_LO, G_WEIGHT_HI = @CPUSET_MAX@, @QUOTA_HI@, @WEIGHT_LO@, @WEIGHT_HI@
local function safe_id(s)
  return type(s) == 'string' and #s <= G_MAX_ID and string.find(s, '^[%w][%w_%.%-]*$') ~= nil
end
local function trace_hint(raw)
  local i = string.find(raw, '"trace_id"', 1, true)
  if not i or string.find(raw, '"trace_id"', i + 1, true) then return nil end
  local id = string.match(raw, '^"trace_id"[ \t\n\r]*:[ \t\n\r]*"([%w][%w_%.%-]*)"', i)
  if id and #id <= G_MAX_ID then return id end
  return nil
end
-- well-formed UTF-8 (RFC 3629): every valid sequence becomes 'x'; any byte >= 128 left over is an error
local function utf8_ok(raw)
  if not string.find(raw, '[\128-\255]') then return true end
  local s = raw
  s = string.gsub(s, '\240[\144-\191][\128-\191][\128-\191]', 'x')
  s = string.gsub(s, '[\241-\243][\128-\191][\128-\191][\128-\191]', 'x')
  s = string.gsub(s, '\244[\128-\143][\128-\191][\128-\191]', 'x')
  s = string.gsub(s, '\224[\160-\191][\128-\191]', 'x')
  s = string.gsub(s, '[\225-\236\238\239][\128-\191][\128-\191]', 'x')
  s = string.gsub(s, '\237[\128-\159][\128-\191]', 'x')
  s = string.gsub(s, '[\194-\223][\128-\191]', 'x')
  return not string.find(s, '[\128-\255]')
end
-- a JSON number token (cjson also reads hex, leading zeros, '+1', '1.', 'inf', 'nan': refused here)
local function number_token(tok)
  local s = tok
  if string.sub(s, 1, 1) == '-' then s = string.sub(s, 2) end
  local int, rest = string.match(s, '^(%d+)(.*)$')
  if not int or (#int > 1 and string.sub(int, 1, 1) == '0') then return false end
  if string.sub(rest, 1, 1) == '.' then
    rest = string.match(rest, '^%.%d+(.*)$')
    if not rest then return false end
  end
  return rest == '' or string.find(rest, '^[eE][%+%-]?%d+$') ~= nil
end
local G_OPENERS = {'{', '['}
local G_LITERAL = {['true'] = true, ['false'] = true, ['null'] = true, NaN = true, Infinity = true,
                   ['-Infinity'] = true}
local function finite(v)
  if type(v) == 'number' then return v == v and v ~= math.huge and v ~= -math.huge end
  if type(v) == 'table' then
    for _, x in pairs(v) do if not finite(x) then return false end end
  end
  return true
end
local function opens_over(raw, limit)
  local n = 0
  for _, b in ipairs(G_OPENERS) do
    local i = string.find(raw, b, 1, true)
    while i do
      n = n + 1
      if n > limit then return true end
      i = string.find(raw, b, i + 1, true)
    end
  end
  return false
end
local function is_int(v, lo, hi) return type(v) == 'number' and v == math.floor(v) and v >= lo and v <= hi end
local function is_num(v, lo, hi) return type(v) == 'number' and v >= lo and v <= hi end
local function absent(v) return v == nil or v == cjson.null end
local function cpuset_ok(v)
  if type(v) ~= 'string' or #v == 0 or #v > G_CPUSET_MAX then return false end
  for part in string.gmatch(v .. ',', '([^,]*),') do
    local a, b = string.match(part, '^(%d%d?%d?%d?)%-(%d%d?%d?%d?)$')
    if a then
      if tonumber(b) < tonumber(a) then return false end
    elseif not string.find(part, '^%d%d?%d?%d?$') then
      return false
    end
  end
  return true
end
local function binding_problem(t)
  if not absent(t.cpuset) and not cpuset_ok(t.cpuset) then return 'cpuset must be a CPU list such as 0-1 or 2,3' end
  if not absent(t.cpu_quota) and not is_int(t.cpu_quota, 1, G_QUOTA_HI) then
    return 'cpu_quota must be an integer percent in 1..' .. G_QUOTA_HI
  end
  if not absent(t.cpu_weight) and not is_int(t.cpu_weight, G_WEIGHT_LO, G_WEIGHT_HI) then
    return 'cpu_weight must be an integer in ' .. G_WEIGHT_LO .. '..' .. G_WEIGHT_HI
  end
  local u = t.unit_name
  if not absent(u) and not (type(u) == 'string' and #u <= G_MAX_ID and string.find(u, '^[%w][%w:_%.%-]*$')) then
    return 'unit_name must be a systemd unit name'
  end
  return nil
end
local function path_ok(v) return type(v) == 'string' and #v > 0 and #v <= G_MAX_PATH and not string.find(v, '%z') end
local function gate(raw)
  if #raw > G_MAX_BYTES then
    return nil, 'size', 'payload of ' .. #raw .. ' bytes exceeds the ' .. G_MAX_BYTES .. '-byte limit', trace_hint(raw)
  end
  -- printable ASCII only (the usual payload): valid UTF-8 without control characters, in one scan
  if string.find(raw, '[^\32-\126]') then
    if not utf8_ok(raw) then return nil, 'utf8', 'payload is not valid UTF-8', trace_hint(raw) end
    if string.find(raw, '[%z\1-\8\11\12\14-\31]') then
      return nil, 'control', 'payload holds a control character', trace_hint(raw)
    end
  end
  local s = raw
  if string.find(s, '\\', 1, true) then s = string.gsub(s, '\\.', '') end
  s = string.gsub(s, '"[^"]*"', '0')
  local d = 0
  -- nesting deeper than G_MAX_DEPTH needs more opening brackets than that in the whole text (strings included):
  -- counted with plain finds, the bracket scan runs only past that many
  if opens_over(raw, G_MAX_DEPTH) then
    for c in string.gmatch(s, '[%[%]{}]') do
      if c == '[' or c == '{' then
        d = d + 1
        if d > G_MAX_DEPTH then
          return nil, 'depth', 'payload nests deeper than ' .. G_MAX_DEPTH .. ' levels', trace_hint(raw)
        end
      else
        d = d - 1
      end
    end
  end
  for tok in string.gmatch(s, '[^ \t\n\r%[%]{}:,]+') do
    -- '0' stands for every string (the most frequent token): accepted without a call
    if not (tok == '0' or G_LITERAL[tok] or number_token(tok)) then
      return nil, 'json', 'payload is not valid JSON: invalid token', trace_hint(raw)
    end
  end
  local ok, t = pcall(cjson.decode, raw)
  if not ok then return nil, 'json', 'payload is not valid JSON: ' .. tostring(t), trace_hint(raw) end
  if type(t) ~= 'table' or not string.find(raw, '^[ \t\n\r]*{') then
    return nil, 'object', 'payload must be a JSON object', nil
  end
  local tid = nil
  if safe_id(t.trace_id) then tid = t.trace_id end
  -- a number decodes to NaN or infinity only from NaN/Infinity, an exponent, or more than 308 digits: without any
  -- of them in the text (strings left out) the walk over the decoded table is skipped
  if (#s > 308 or string.find(s, '[eEIN]')) and not finite(t) then
    return nil, 'number', 'payload holds a number that is not finite (NaN, Infinity or beyond a double: 1e400)',
      tid
  end
  if not tid then return nil, 'trace_id', 'trace_id missing or unsafe (letters, digits, _ . -)', nil end
  if not safe_id(t.profile) then return nil, 'profile', 'profile missing or not a profile name', tid end
  if not absent(t.cpu_units) and not is_int(t.cpu_units, G_UNITS_LO, G_UNITS_HI) then
    return nil, 'cpu_units', 'cpu_units must be an integer in ' .. G_UNITS_LO .. '..' .. G_UNITS_HI, tid
  end
  if not absent(t.attempt) and not is_int(t.attempt, G_ATTEMPT_LO, G_ATTEMPT_HI) then
    return nil, 'attempt', 'attempt must be an integer in ' .. G_ATTEMPT_LO .. '..' .. G_ATTEMPT_HI, tid
  end
  if not is_num(t.ts_enqueue, G_TS_LO, G_TS_HI) then
    return nil, 'ts_enqueue', 'ts_enqueue must be epoch milliseconds', tid
  end
  if not absent(t.ts_dispatch) and not is_num(t.ts_dispatch, G_TS_LO, G_TS_HI) then
    return nil, 'ts_dispatch', 'ts_dispatch must be epoch milliseconds', tid
  end
  if not absent(t.node) and type(t.node) ~= 'string' then return nil, 'node', 'node must be a string', tid end
  for _, key in ipairs({'input', 'output'}) do
    if not absent(t[key]) and not path_ok(t[key]) then
      return nil, key, key .. ' must be a non-empty path string (at most ' .. G_MAX_PATH .. ' bytes, no NUL)', tid
    end
  end
  local p = t.params
  if not absent(p) and not (type(p) == 'table' and (next(p) == nil or type(next(p)) == 'string')) then
    return nil, 'params', 'params must be an object', tid
  end
  local why = binding_problem(t)
  if why then return nil, 'binding', why, tid end
  return t
end
local function sha12(raw) return string.sub(redis.sha1hex(raw or ''), 1, 12) end
"""


def weigher_lua() -> str:
    """The Lua table ``METRICS``: weigher name -> function(cap, cap_total, run_count) returning its raw metric.

    Generated from :data:`tracekit.control.placement.WEIGHER_TABLE` (each entry's Lua expression), so the
    placement script and the pure model read the same one table.
    """
    lines = ["local METRICS = {}"]
    lines += [f"METRICS[{_lua_str(name)}] = function(cap, cap_total, run_count) return {entry.lua} end"
              for name, entry in WEIGHER_TABLE.items()]
    return "\n".join(lines) + "\n"


# The placement index: every registered node that can take a task now (alive as far as known, not draining, cap >= 1
# and, in slots mode, a free slot token) is a member of
#   idx:free               score 0: ZRANGE yields node_id order (equal scores sort by member, bytewise) -> first-fit
#   idx:cap                score = free cap: ZCOUNT units +inf = how many nodes the head task could use
#   idx:w:<weigher>:min    score = metric / cap_total (the weigher's Lua expression from WEIGHER_TABLE)
#   idx:w:<weigher>:max    score = -(metric / cap_total): ZRANGE gives the largest value first, ties still node_id
# (a weigher's zset is kept only once a PLACE asked for that weigher and order: idx:active lists them)
# plus idx:slots (hash node -> free slot tokens, kept with the slots list) and idx:big (nodes whose cap_total or
# metric exceed 2^16: only then can two different fractions round to one double, and PLACE compares a whole group
# of equal scores exactly). Every step that changes cap, cap_total, run_count, slot tokens, draining or
# registration calls idx_put / idx_drop in the same script; a heartbeat that expires is found lazily (PLACE drops
# the node, BEAT puts it back, REAP removes it); REINDEX rebuilds everything from the node keys.
INDEX = r"""
local IDX_BIG = 65536
-- an integer as text, cached: a number passed to redis.call is formatted with "%.17g" and one concatenated with
-- "%.14g" (sprintf both, ~0.15 µs each, a dozen per task); other numbers as a concatenation writes them
local INT_S = {}
local function istr(n)
  local s = INT_S[n]
  if not s then
    s = string.format('%.14g', n)
    if n == math.floor(n) and n >= 0 and n <= 65536 then INT_S[n] = s end
  end
  return s
end
local function node_state(node)
  local v = redis.call('MGET', K.heartbeat(node), K.cap(node), K.cap_total(node), K.run_count(node))
  local info = redis.call('HMGET', K.node_info(node), 'parallel', 'draining')
  local s = {node = node, alive = v[1] ~= false, cap = tonumber(v[2]) or 0, total = tonumber(v[3]) or 0,
             rc = tonumber(v[4]) or 0, par = tonumber(info[1] or '0') or 0, draining = info[2] == '1',
             registered = v[3] ~= false, slots = 0}
  if s.par > 0 then s.slots = tonumber(redis.call('HGET', K.idx_slots, node) or '0') or 0 end
  return s
end
local function eligible(s)
  return s.registered and s.alive and not s.draining and s.cap > 0 and (s.par <= 0 or s.slots > 0)
end
local function score_of(s, name, f)
  local m = f(s.cap, s.total, s.rc)
  if s.total > 0 then return m / s.total, m end
  return 0, m
end
-- the weigher indexes kept up to date: {name, order, metric} for each 'name:order' of idx:active (read once per
-- script run; PLACE activates the one it is asked for)
local IDX_ACT = nil
local function active()
  if not IDX_ACT then
    IDX_ACT = {}
    for _, x in ipairs(redis.call('SMEMBERS', K.idx_active)) do
      local name, order = string.match(x, '^(.*):(m[ai][nx])$')
      if name and METRICS[name] then table.insert(IDX_ACT, {name, order, METRICS[name]}) end
    end
  end
  return IDX_ACT
end
local function w_score(s, a)
  local v, m = score_of(s, a[1], a[3])
  if a[2] == 'max' then v = -v end
  return v, m
end
local function idx_drop(node, small)
  redis.call('ZREM', K.idx_free, node)
  redis.call('ZREM', K.idx_cap, node)
  for _, a in ipairs(active()) do redis.call('ZREM', K.idx_w(a[1], a[2]), node) end
  if not small then redis.call('SREM', K.idx_big, node) end
end
-- put a node in (or out of) the index from its state; hint.listed: it is in idx:free already, hint.small: idx:big
-- is known not to hold it
local function idx_put(s, hint)
  if not eligible(s) then idx_drop(s.node, hint and hint.small); return false end
  if not (hint and hint.listed) then redis.call('ZADD', K.idx_free, '0', s.node) end
  redis.call('ZADD', K.idx_cap, istr(s.cap), s.node)
  local big = s.total > IDX_BIG
  for _, a in ipairs(active()) do
    local v, m = w_score(s, a)
    redis.call('ZADD', K.idx_w(a[1], a[2]), v, s.node)
    if m > IDX_BIG or m < -IDX_BIG then big = true end
  end
  if big then redis.call('SADD', K.idx_big, s.node)
  elseif not (hint and hint.small) then redis.call('SREM', K.idx_big, s.node) end
  return big
end
local function idx_refresh(node) idx_put(node_state(node)) end
-- start keeping the index of one weigher and order: built from the nodes of idx:free, O(nodes) once
local function idx_activate(name, order)
  if redis.call('SADD', K.idx_active, name .. ':' .. order) == 0 then return end
  local a = {name, order, METRICS[name]}
  table.insert(active(), a)
  redis.call('DEL', K.idx_w(name, order))
  for _, nd in ipairs(redis.call('ZRANGE', K.idx_free, 0, -1)) do
    local s = node_state(nd)
    local v, m = w_score(s, a)
    redis.call('ZADD', K.idx_w(name, order), v, nd)
    if m > IDX_BIG or m < -IDX_BIG then redis.call('SADD', K.idx_big, nd) end
  end
end
"""


_COMMON = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- the wake list holds at most one element: push only onto an empty one (a busy scheduler has not taken it yet)
local function wake()
  if redis.call('LLEN', K.wake) == 0 then redis.call('LPUSH', K.wake, '1') end
end
local function decode(raw)
  local ok, t = pcall(cjson.decode, raw)
  if ok and type(t) == 'table' then return t end
  return nil
end
-- the units a payload holds (COMPLETE gives them back: within the gate's range, never inf or NaN)
local function units_of(t)
  local u = t and tonumber(t.cpu_units)
  if is_int(u, G_UNITS_LO, G_UNITS_HI) and type(t.trace_id) == 'string' then return u end
  return nil
end
-- the units of a payload PLACE placed, read from its text when it names cpu_units once (then that is the top-level
-- member PLACE read) and holds no escape; else decoded
local function placed_units(raw)
  local i = string.find(raw, '"cpu_units"', 1, true)
  if i and not string.find(raw, '"cpu_units"', i + 1, true) and not string.find(raw, '\\', 1, true) then
    local u = tonumber(string.match(raw, '^"cpu_units"[ \t\n\r]*:[ \t\n\r]*(%d+)[ \t\n\r]*[,}]', i))
    if is_int(u, G_UNITS_LO, G_UNITS_HI) then return u end
  end
  return units_of(decode(raw))
end
local function max_attempts()
  return tonumber(redis.call('HGET', K.config, 'max_attempts') or '3') or 3
end
local function ctl_log(file, rec)
  redis.call('XADD', K.controller_log, '*', 'f', file, 'r', cjson.encode(rec))
end
local function event(kind, tid, attempt, node, extra)
  local a = attempt or 0
  if type(a) == 'number' then a = istr(a) end
  redis.call('XADD', K.events, 'MAXLEN', '~', '100000', '*', 'kind', kind, 'trace_id', tid or '',
             'attempt', tostring(a), 'node', node or '', 'extra', extra or '')
end
local function free_key(base)
  local k, i = base, 1
  while redis.call('HEXISTS', K.failed, k) == 1 or redis.call('HEXISTS', K.done, k) == 1 do
    i = i + 1
    k = base .. '-' .. i
  end
  return k
end
-- the key a refused payload is recorded under: its own trace_id when one could be read and no other payload
-- claimed it in this run, else bad-<sha1> (a free one: identical refused payloads get one record each)
local function record_key(tid, raw)
  if tid and not redis.call('HGET', K.trace_ids, tid) and redis.call('HEXISTS', K.done, tid) == 0
     and redis.call('HEXISTS', K.failed, tid) == 0 then
    return tid
  end
  return free_key('bad-' .. sha12(raw))
end
local function printable(s) return (string.gsub(s or '', '[^\32-\126]', '?')) end
-- record a task given up by the controller (Redis record + controller/events.jsonl line). Everything in the
-- record is printable ASCII or a checked id (raw bytes would make every decoding reader fail) and it is encoded
-- before anything is written, so this never fails half-way.
local function fail(tid, attempt, node, profile, now, reason, raw)
  if not safe_id(tid) then tid = free_key('bad-' .. sha12(raw)) end
  if not safe_id(profile) then profile = cjson.null end
  local rec = {kind='failed', trace_id=tid, attempt=tonumber(attempt) or 0, node_id=printable(node), profile=profile,
               ts=now, reason=printable(reason), payload_excerpt=printable(string.sub(raw or '', 1, 200))}
  local ok, enc = pcall(cjson.encode, rec)
  if not ok then
    rec.reason = 'unrecordable failure'
    rec.profile = cjson.null
    enc = cjson.encode(rec)
  end
  redis.call('HSET', K.failed, tid, enc)
  redis.call('HSET', K.trace_ids, tid, 'f')
  redis.call('XADD', K.controller_log, '*', 'f', 'c', 'r', enc)
  event('failed', tid, rec.attempt, rec.node_id, rec.reason)
end
-- items: list of {raw, bump}, oldest first. Each goes back to the HEAD of q:pending, in the same
-- order, with attempt+1 when bump; or is recorded failed past max attempts / when unreadable.
local function requeue(items, node, why, now)
  local maxa = max_attempts()
  local back = {}
  local nfail = 0
  for _, it in ipairs(items) do
    local raw, bump = it[1], it[2]
    local t, _, bad, tid = gate(raw)
    if not t then
      fail(record_key(tid, raw), 0, node, nil, now, bad .. ' (' .. why .. ')', raw)
      nfail = nfail + 1
    else
      local a = (tonumber(t.attempt) or 1)
      if bump then
        if a + 1 > maxa then
          local msg = why .. '; gave up after ' .. a .. ' attempt(s) (max ' .. maxa .. ')'
          fail(t.trace_id, a, node, t.profile, now, msg, raw)
          nfail = nfail + 1
        else
          t.attempt = a + 1
        end
      end
      if not bump or a + 1 <= maxa then
        t.node = nil
        t.ts_dispatch = nil
        local ok, enc = pcall(cjson.encode, t)
        if ok then
          table.insert(back, enc)
          -- back in q:pending with this attempt: the one payload PLACE accepts again for this trace_id
          redis.call('HSET', K.trace_ids, t.trace_id, 'q' .. (tonumber(t.attempt) or 1))
          event('requeue', t.trace_id, t.attempt, node, why)
          ctl_log('c', {kind='requeue', trace_id=t.trace_id, attempt=t.attempt, node_id=node, ts=now, bump=bump,
                        reason=why})
        else
          fail(t.trace_id, a, node, t.profile, now, 'cannot re-encode the payload: ' .. tostring(enc), raw)
          nfail = nfail + 1
        end
      end
    end
  end
  for i = #back, 1, -1 do redis.call('LPUSH', K.pending, back[i]) end
  if #back > 0 then wake() end
  return #back, nfail
end
-- remove a node from the pool; its running tasks (bumped) then placed ones (bumped when bump_queued)
local function drop_node(node, why, bump_queued, now)
  local items = {}
  for _, raw in ipairs(redis.call('LRANGE', K.running(node), 0, -1)) do table.insert(items, {raw, true}) end
  for _, raw in ipairs(redis.call('LRANGE', K.queue(node), 0, -1)) do table.insert(items, {raw, bump_queued}) end
  redis.call('DEL', K.running(node), K.queue(node), K.cap(node), K.cap_total(node), K.run_count(node),
             K.node_info(node), K.heartbeat(node))
  redis.call('LREM', K.slots, 0, node)
  redis.call('HDEL', K.idx_slots, node)
  redis.call('ZREM', K.nodes, node)
  idx_drop(node)
  local nb, nf = requeue(items, node, why, now)
  wake()
  return {nb, nf}
end
"""

PLACE = r"""
-- ARGV: weigher ('' = first-fit, or a name of METRICS), order (min | max), limit (max placements in this call),
-- log_candidates ('1': the placement line also lists every feasible node: O(nodes) per placement, for debugging),
-- then (optional) the head of q:pending as the scheduler read and checked it with the same gate
-- (payload.check), four values per entry in queue order: raw payload, trace_id, attempt, cpu_units. An entry
-- byte-identical to the one at its position now skips the Lua gate (Redis's CPU is the scheduler's bottleneck);
-- any other entry (pushed to the head meanwhile, or not sent) passes the Lua gate here.
local weigher, order, limit, full = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local npre = math.floor((#ARGV - 4) / 4)
local metric = METRICS[weigher]
if weigher ~= '' and not metric then return redis.error_reply('unknown weigher ' .. weigher) end
if order ~= 'min' and order ~= 'max' then return redis.error_reply('order must be min or max') end
local zkey = K.idx_free
if metric then
  idx_activate(weigher, order)
  zkey = K.idx_w(weigher, order)
end
local st = {}  -- node -> state, read once per call (nothing else runs meanwhile; the chosen node is kept up to date)
local function get(nd)
  local s = st[nd]
  if not s then s = node_state(nd); st[nd] = s end
  return s
end
local function mval(s)
  if not metric then return 0 end
  return (score_of(s, weigher, metric))
end
local function expected_score(s)
  local v = mval(s)
  if order == 'max' then return -v end
  return v
end
-- a strictly preferred over b, exactly (cross-multiplication, as placement._better)
local function better(a, b)
  local lhs = metric(a.cap, a.total, a.rc) * b.total
  local rhs = metric(b.cap, b.total, b.rc) * a.total
  if order == 'min' then return lhs < rhs end
  return lhs > rhs
end
-- the best and the runner-up feasible node for a task of units: the index in its order, skipping (and then
-- fixing) the entries whose node turned out dead, full or stale. With no node in idx:big, equal scores are equal
-- fractions (ties in node_id order: the member order); else the group of equal scores is compared exactly.
local small = redis.call('SCARD', K.idx_big) == 0
local function scan(units)
  local exact = (not metric) or small
  for _ = 1, 3 do
    local best, second, ssc = nil, nil, nil
    local fix, stale = {}, false
    local pos, CH, done = 0, 4, false
    while not done do
      -- first-fit's index scores are all 0: read without them (a reply's scores cost more than its members)
      local chunk, step = nil, 1
      if metric then chunk, step = redis.call('ZRANGE', zkey, pos, pos + CH - 1, 'WITHSCORES'), 2
      else chunk = redis.call('ZRANGE', zkey, pos, pos + CH - 1) end
      if #chunk == 0 then break end
      pos = pos + CH
      for j = 1, #chunk, step do
        local nd, sc = chunk[j], 0
        if metric then sc = tonumber(chunk[j + 1]) end
        if second and (exact or sc ~= ssc) then done = true; break end
        local s = get(nd)
        if not eligible(s) then
          table.insert(fix, s)
        elseif sc ~= expected_score(s) then
          table.insert(fix, s)
          stale = true
        elseif s.cap >= units then
          if not best then
            best = s
          elseif not exact and better(s, best) then
            second, ssc, best = best, expected_score(best), s
          elseif not second or (not exact and better(s, second)) then
            second, ssc = s, sc
          end
        end
      end
    end
    for _, s in ipairs(fix) do idx_put(s) end
    if not stale then return best, second end
  end
  return nil, nil
end
local all, cstr = nil, {}
local function candidates(units)
  if not all then all = redis.call('ZRANGE', K.nodes, 0, -1) end
  local out = {}
  for _, nd in ipairs(all) do
    local s = get(nd)
    if eligible(s) and s.cap >= units then
      if not cstr[nd] then
        cstr[nd] = '{"node":' .. cjson.encode(nd) .. ',"cap":' .. s.cap .. ',"cap_total":' .. s.total ..
          ',"run_count":' .. s.rc .. ',"value":' .. string.format('%.6g', mval(s)) .. '}'
      end
      out[#out + 1] = cstr[nd]
    end
  end
  return out
end
-- the head of q:pending, read in chunks; everything this call takes from it is popped once, at the end
local head, nread, taken = {}, 0, 0
local function head_at(i)
  if i > nread then
    local more = redis.call('LRANGE', K.pending, nread, nread + math.max(npre - nread, 8) - 1)
    for k = 1, #more do head[nread + k] = more[k] end
    nread = nread + #more
  end
  return head[i]
end
-- the payload as placed: the raw text with node and ts_dispatch appended when it holds neither (nor an escape
-- that could spell them), else re-encoded from its decoded table
local function placed_payload(raw, t, nd, now)
  if string.byte(raw, -1) == 125 and not string.find(raw, '\\', 1, true) and
     not string.find(raw, '"node"', 1, true) and not string.find(raw, '"ts_dispatch"', 1, true) then
    return string.sub(raw, 1, -2) .. ',"node":' .. cjson.encode(nd) .. ',"ts_dispatch":' .. string.format('%d', now) ..
      '}'
  end
  t = t or cjson.decode(raw)
  t.node = nd
  t.ts_dispatch = now
  return cjson.encode(t)  -- cannot fail after the gate (finite numbers, bounded depth)
end
local placed, status = 0, 'limit'
while placed < limit do
  local i = taken + 1
  local raw = head_at(i)
  if not raw then status = 'empty'; break end
  -- everything that can fail is checked before the pop (gate, duplicate, encode): a refused payload is recorded
  -- failed (under its own trace_id when it can be read) and only then popped
  local t, tid, attempt, units, bad, _ = nil, nil, nil, nil, nil, nil
  local a = 4 * i + 1
  if i <= npre and raw == ARGV[a] then
    tid, attempt, units = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  else
    t, _, bad, tid = gate(raw)
    if t then
      tid, attempt, units = t.trace_id, tonumber(t.attempt) or 1, t.cpu_units
      if type(units) ~= 'number' then
        bad = 'cpu_units missing: the scheduler places only payloads that say how many units they need'
        t, units = nil, nil
      end
    end
  end
  if units then
    local mark = redis.call('HGET', K.trace_ids, tid)
    if mark and mark ~= 'q' .. istr(attempt) then
      bad = 'duplicate trace_id ' .. tid .. ': already used in this run (' .. mark .. ')'
      units, tid = nil, nil
    end
  end
  if not units then
    fail(record_key(tid, raw), 0, '', nil, now_ms(), 'refused at the head of q:pending: ' .. bad, raw)
    taken = i
  else
    local best, second = scan(units)
    if not best then status = 'blocked'; break end
    local nd = best.node
    local now = now_ms()
    local rec = '{"trace_id":' .. cjson.encode(tid) .. ',"attempt":' .. istr(attempt) ..
      ',"node":' .. cjson.encode(nd) .. ',"ts":' .. string.format('%d', now) .. ',"weigher":' ..
      cjson.encode(weigher) .. ',"order":' .. cjson.encode(order) .. ',"cpu_units":' .. istr(units) .. ',"cap":' ..
      istr(best.cap) .. ',"cap_total":' .. istr(best.total) .. ',"run_count":' .. istr(best.rc) .. ',"value":' ..
      (metric and string.format('%.6g', mval(best)) or '0') .. ',"runner_up":'
    if second then
      rec = rec .. '{"node":' .. cjson.encode(second.node) .. ',"value":' .. string.format('%.6g', mval(second)) .. '}'
    else
      rec = rec .. 'null'
    end
    if full then
      local c
      if not metric then
        c = {'{"node":' .. cjson.encode(nd) .. ',"cap":' .. best.cap .. ',"cap_total":' .. best.total ..
             ',"run_count":' .. best.rc .. ',"value":0}'}
        rec = rec .. ',"feasible":' .. redis.call('ZCOUNT', K.idx_cap, units, '+inf')
      else
        c = candidates(units)
        rec = rec .. ',"feasible":' .. #c
      end
      rec = rec .. ',"candidates":[' .. table.concat(c, ',') .. ']}'
    else
      rec = rec .. ',"feasible":' .. istr(redis.call('ZCOUNT', K.idx_cap, istr(units), '+inf')) .. '}'
    end
    local enc = placed_payload(raw, t, nd, now)
    taken = i
    redis.call('HSET', K.trace_ids, tid, 'p' .. istr(attempt) .. '@' .. nd)
    redis.call('RPUSH', K.queue(nd), enc)
    best.cap = best.cap - units
    best.rc = best.rc + 1
    redis.call('MSET', K.cap(nd), istr(best.cap), K.run_count(nd), istr(best.rc))
    if best.par > 0 then
      redis.call('LREM', K.slots, 1, nd)
      best.slots = best.slots - 1
      redis.call('HSET', K.idx_slots, nd, best.slots)
    end
    cstr[nd] = nil
    if idx_put(best, {listed = true, small = small}) then small = false end
    redis.call('XADD', K.controller_log, '*', 'f', 'p', 'r', rec)
    placed = placed + 1
  end
end
if taken > 0 then redis.call('LTRIM', K.pending, taken, -1) end
return {placed, status}
"""

REINDEX = r"""
-- Rebuild the placement index from the node keys (the scheduler runs it at start; tests after raw writes).
-- O(nodes + slot tokens). Returns the number of indexed nodes.
-- ARGV (optional): weigher, order: the weigher index to keep from now on (PLACE activates others on demand)
for _, a in ipairs(active()) do redis.call('DEL', K.idx_w(a[1], a[2])) end
for _, k in ipairs({K.idx_free, K.idx_cap, K.idx_slots, K.idx_big, K.idx_active}) do redis.call('DEL', k) end
IDX_ACT = {}
if ARGV[1] and METRICS[ARGV[1]] then
  redis.call('SADD', K.idx_active, ARGV[1] .. ':' .. ARGV[2])
  table.insert(IDX_ACT, {ARGV[1], ARGV[2], METRICS[ARGV[1]]})
end
local count = {}
for _, tok in ipairs(redis.call('LRANGE', K.slots, 0, -1)) do count[tok] = (count[tok] or 0) + 1 end
for _, nd in ipairs(redis.call('ZRANGE', K.nodes, 0, -1)) do
  if count[nd] then redis.call('HSET', K.idx_slots, nd, count[nd]) end
  idx_refresh(nd)
end
return redis.call('ZCARD', K.idx_free)
"""

REGISTER = r"""
-- ARGV: node, instance, capacity, parallel, ttl_ms, mode, then info field/value pairs.
-- mode 0: keep the placed tasks that still fit; 1 (--clear-queue): record them failed; 2 (--reset-capacity):
-- send them all back to the head of q:pending, so cap = capacity.
local node, inst = ARGV[1], ARGV[2]
local capacity, parallel, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local clear, reset = ARGV[6] == '1', ARGV[6] == '2'
local now = now_ms()
local items = {}
-- what a previous instance took but never finished did not complete: attempt+1
for _, raw in ipairs(redis.call('LRANGE', K.running(node), 0, -1)) do table.insert(items, {raw, true}) end
redis.call('DEL', K.running(node))
local kept, used, cleared = {}, 0, 0
for _, raw in ipairs(redis.call('LRANGE', K.queue(node), 0, -1)) do
  local t = decode(raw)
  local u = units_of(t)
  if clear then
    if u then
      fail(t.trace_id, tonumber(t.attempt) or 1, node, t.profile, now, 'cleared by worker --clear-queue', raw)
    else
      fail('bad-' .. string.sub(redis.sha1hex(raw), 1, 12), 0, node, '', now, 'cleared by worker --clear-queue', raw)
    end
    cleared = cleared + 1
  elseif u and not reset and used + u <= capacity and (parallel <= 0 or #kept < parallel)
         and redis.call('HGET', K.trace_ids, t.trace_id) == 'p' .. (tonumber(t.attempt) or 1) .. '@' .. node then
    -- (only what PLACE put here holds capacity; anything else goes through PLACE first)
    table.insert(kept, raw)
    used = used + u
  else
    -- placed but never started, and no longer fits this node: back to the head, same attempt
    table.insert(items, {raw, false})
  end
end
redis.call('DEL', K.queue(node))
for _, raw in ipairs(kept) do redis.call('RPUSH', K.queue(node), raw) end
redis.call('SET', K.cap_total(node), capacity)
redis.call('SET', K.cap(node), capacity - used)
redis.call('SET', K.run_count(node), #kept)
redis.call('LREM', K.slots, 0, node)
redis.call('HDEL', K.idx_slots, node)
if parallel > 0 then
  for _ = 1, parallel - #kept do redis.call('RPUSH', K.slots, node) end
  redis.call('HSET', K.idx_slots, node, math.max(0, parallel - #kept))
end
redis.call('DEL', K.node_info(node))
local info = {'instance', inst, 'capacity', capacity, 'parallel', parallel, 'registered_ms', now}
for i = 7, #ARGV do table.insert(info, ARGV[i]) end
redis.call('HSET', K.node_info(node), unpack(info))
redis.call('ZADD', K.nodes, 0, node)
redis.call('SET', K.heartbeat(node), inst, 'PX', ttl)
idx_refresh(node)
local nb, nf = requeue(items, node, 'worker restarted: previous instance did not finish', now)
event('register', '', 0, node, inst)
wake()
return {nb, nf, #kept, cleared}
"""

BEAT = r"""
-- ARGV: node, instance, ttl_ms. Returns 1, or 0 when the node was recovered/replaced: re-register.
local node, inst, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', K.node_info(node), 'instance') ~= inst then return 0 end
local lapsed = redis.call('EXISTS', K.heartbeat(node)) == 0
redis.call('SET', K.heartbeat(node), inst, 'PX', ttl)
if lapsed then idx_refresh(node) end  -- PLACE may have dropped it from the index while its heartbeat had expired
return 1
"""

COMPLETE = r"""
-- ARGV: node, raw payload (exactly as taken), trace_id, attempt, outcome (done | failed), record JSON
-- Returns 'ok' (accepted), 'dup' (this same attempt was already accepted) or 'fenced'.
local node, raw, tid, attempt, outcome, rec = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('LREM', K.running(node), 1, raw) == 0 then
  for _, h in ipairs({K.done, K.failed}) do
    local prev = decode(redis.call('HGET', h, tid) or '')
    if prev and tonumber(prev.attempt) == attempt and prev.node_id == node and prev.by == 'worker' then return 'dup' end
  end
  return 'fenced'
end
-- the node's counters in one read and one write (the values INCRBY / DECR and their clamps would leave)
local v = redis.call('MGET', K.heartbeat(node), K.cap(node), K.cap_total(node), K.run_count(node))
local total = tonumber(v[3])
-- only what PLACE reserved on this node comes back: a payload put straight into q:<node> reserved nothing
local mark = redis.call('HGET', K.trace_ids, tid)
local placed = mark == 'p' .. istr(attempt) .. '@' .. node
if total and placed then
  local units = placed_units(raw) or 0
  local c = math.min((tonumber(v[2]) or 0) + units, total)
  local rc = math.max((tonumber(v[4]) or 0) - 1, 0)
  redis.call('MSET', K.cap(node), istr(c), K.run_count(node), istr(rc))
  local info = redis.call('HMGET', K.node_info(node), 'parallel', 'draining')
  local s = {node = node, alive = v[1] ~= false, cap = c, total = total, rc = rc,
             par = tonumber(info[1] or '0') or 0, draining = info[2] == '1', registered = true, slots = 0}
  if s.par > 0 then
    redis.call('RPUSH', K.slots, node)
    s.slots = redis.call('HINCRBY', K.idx_slots, node, 1)
  end
  -- the node's new state, known here without reading it back; with no weigher index kept, idx:big holds exactly
  -- the nodes of more than IDX_BIG units
  idx_put(s, {small = total <= IDX_BIG and #active() == 0})
end
-- a record of this trace_id exists already (a duplicate put straight into q:<node>): keep it, record this one
-- under a free bad-<sha1> key; the worker then treats the attempt as refused. The usual case (no record) checks
-- the other hash and writes this one with HSETNX: the check of this hash and the write in one call.
local verdict = 'ok'
local h, other = K.done, K.failed
if outcome ~= 'done' then h, other = K.failed, K.done end
if redis.call('HEXISTS', other, tid) == 1 or redis.call('HSETNX', h, tid, rec) == 0 then
  local r = decode(rec) or {}
  if string.sub(tid, 1, 4) ~= 'bad-' then
    r.duplicate_of = tid
    r.status = 'duplicate'
    r.reason = 'duplicate trace_id ' .. tid .. ': a record of it exists already (this attempt ended ' .. outcome .. ')'
    outcome, verdict = 'failed', 'duplicate'
    tid = free_key('bad-' .. sha12(raw))
  else
    tid = free_key(tid)
  end
  r.trace_id = tid
  local ok, enc = pcall(cjson.encode, r)
  rec = ok and enc or cjson.encode({trace_id = tid, status = 'duplicate', reason = 'duplicate', node_id = node})
  redis.call('HSET', outcome == 'done' and K.done or K.failed, tid, rec)
end
if placed or not mark then redis.call('HSET', K.trace_ids, tid, 'd') end
event(outcome, tid, attempt, node, '')
-- the release record, written out (cjson.encode of a table costs twice as much)
redis.call('XADD', K.controller_log, '*', 'f', 'c', 'r', '{"kind":"release","trace_id":' .. cjson.encode(tid) ..
  ',"attempt":' .. istr(attempt) .. ',"node_id":' .. cjson.encode(node) .. ',"ts":' .. string.format('%d', now_ms()) ..
  ',"outcome":' .. cjson.encode(outcome) .. '}')
-- the capacity back matters to the scheduler only when a task waits (else the next push wakes it): a round per
-- completion on an idle queue would delay the next placement and cost Redis ~20 µs each. The wake list is looked
-- at first: while the scheduler is busy it holds its one element already (one call, the usual case)
if placed and redis.call('LLEN', K.wake) == 0 and redis.call('EXISTS', K.pending) == 1 then
  redis.call('LPUSH', K.wake, '1')
end
return verdict
"""

REAP = r"""
-- Recover every registered node whose heartbeat expired. Returns {nodes, requeued, failed}.
local now = now_ms()
local dead, nb, nf = 0, 0, 0
local nodes, lost = redis.call('ZRANGE', K.nodes, 0, -1), {}
for s = 1, #nodes, 500 do  -- one MGET per 500 heartbeats: this runs every second over every node
  local mk = {}
  for i = s, math.min(#nodes, s + 499) do mk[#mk + 1] = K.heartbeat(nodes[i]) end
  local v = redis.call('MGET', unpack(mk))
  for i = s, math.min(#nodes, s + 499) do
    if v[i - s + 1] == false then table.insert(lost, nodes[i]) end
  end
end
for _, node in ipairs(lost) do
  local r = drop_node(node, 'node ' .. node .. ' lost (heartbeat expired)', true, now)
  event('recover', '', 0, node, tostring(r[1]) .. ' requeued, ' .. tostring(r[2]) .. ' failed')
  dead, nb, nf = dead + 1, nb + r[1], nf + r[2]
end
return {dead, nb, nf}
"""

LEAVE = r"""
-- ARGV: node, instance. A worker stops cleanly: only when it is still the registered instance.
local node, inst = ARGV[1], ARGV[2]
if redis.call('HGET', K.node_info(node), 'instance') ~= inst then return {0, 0} end
local r = drop_node(node, 'worker on ' .. node .. ' stopped', false, now_ms())
event('leave', '', 0, node, inst)
return r
"""

DRAIN = r"""
-- ARGV: node, instance. A worker that is stopping (first SIGTERM): PLACE skips it from now on, and its placed
-- but not started tasks go back to the head of q:pending (same attempt) with their capacity, run_count and slot
-- tokens. Returns {requeued, failed}, or {-1, 0} when this instance is no longer the registered one.
local node, inst = ARGV[1], ARGV[2]
if redis.call('HGET', K.node_info(node), 'instance') ~= inst then return {-1, 0} end
redis.call('HSET', K.node_info(node), 'draining', '1')
idx_drop(node)
local items, units = {}, 0
for _, raw in ipairs(redis.call('LRANGE', K.queue(node), 0, -1)) do
  table.insert(items, {raw, false})
  units = units + (units_of(decode(raw)) or 0)
end
if #items == 0 then return {0, 0} end
redis.call('DEL', K.queue(node))
local total = tonumber(redis.call('GET', K.cap_total(node)) or '0') or 0
if redis.call('INCRBY', K.cap(node), units) > total then redis.call('SET', K.cap(node), total) end
if redis.call('DECRBY', K.run_count(node), #items) < 0 then redis.call('SET', K.run_count(node), 0) end
if (tonumber(redis.call('HGET', K.node_info(node), 'parallel') or '0') or 0) > 0 then
  for _ = 1, #items do redis.call('RPUSH', K.slots, node) end
  redis.call('HINCRBY', K.idx_slots, node, #items)
end
local nb, nf = requeue(items, node, 'worker on ' .. node .. ' is stopping', now_ms())
event('drain', '', 0, node, inst)
return {nb, nf}
"""

OWN = r"""
-- KEYS: owner:<node>. ARGV: token (host:pid:instance), ttl_ms, expected ('' or the token of a dead previous
-- worker to take over). The one worker of a node: returns {1, token} when the caller owns the node (taken or
-- refreshed), else {0, holder}.
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] or (ARGV[3] ~= '' and cur == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return {1, ARGV[1]}
end
return {0, cur}
"""


GATE_CHECK = r"""
-- ARGV: one payload. Read-only: {rule, trace_id, reason} ('' when it passes / cannot be read) of the payload gate.
local t, rule, why, tid = gate(ARGV[1])
if t then return {'', t.trace_id, ''} end
return {rule, tid or '', why}
"""


class Step:
    """One atomic step, called as a redis-py ``Script`` is (``keys=``, ``args=``, ``client=``).

    On Redis >= 7 it is a function of one library (``FCALL``): the library's definitions run once when it is loaded,
    not at every call as with ``EVALSHA`` (~2.4 µs of Redis CPU per call for the ``complete`` step's helpers). Loaded
    on first use and again when Redis lost it (a restart); where ``FUNCTION`` is unknown (Redis 6.2, the documented
    minimum) or not allowed to this user, the step runs as its script (``EVALSHA``), as before."""

    def __init__(self, client: redis.Redis, script, function: str, library: _Library) -> None:
        self.client, self.script_obj, self.function, self.library = client, script, function, library
        self.script = script.script  # the script text (EVALSHA form)

    def __call__(self, keys=None, args=None, client=None):
        keys, args = list(keys or []), list(args or [])
        c = client or self.client
        lib = self.library
        if isinstance(c, redis.client.Pipeline):
            if lib.loaded:
                return c.fcall(self.function, len(keys), *keys, *args)
            return self.script_obj(keys=keys, args=args, client=c)
        if lib.available:
            try:
                if not lib.loaded:
                    lib.load(c)
                if lib.available:
                    return c.fcall(self.function, len(keys), *keys, *args)
            except redis.exceptions.ResponseError as exc:
                if not lib.lost(exc):
                    raise
                lib.load(c)  # once
                if lib.available:
                    return c.fcall(self.function, len(keys), *keys, *args)
        return self.script_obj(keys=keys, args=args, client=c)

    def begin(self, args: list) -> Callable[[], Any]:
        """Send the step (no keys) and return the function that waits for its reply: the caller works while Redis
        runs it. Where the library is not loaded (or unavailable) the step runs now and the function returns its
        reply."""
        lib = self.library
        if not (lib.available and lib.loaded):
            reply = self(args=args)
            return lambda: reply
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            conn = pool.get_connection("FCALL")
        try:
            conn.send_command("FCALL", self.function, 0, *args)
        except BaseException:
            pool.release(conn)
            raise

        def finish() -> Any:
            try:
                return conn.read_response()
            except redis.exceptions.ResponseError as exc:
                if not lib.lost(exc):
                    raise
                return self(args=args)  # the usual call loads the library again
            except BaseException:
                conn.disconnect()  # a reply may still be on its way: the connection is not reused
                raise
            finally:
                pool.release(conn)
        return finish


class _Library:
    """The function library of one step set (key prefix + weigher table): its name carries a hash of its code, so
    two sets never clash and a changed code is a new library."""

    def __init__(self, code: str) -> None:
        self.code, self.available, self.loaded = code, True, False

    def lost(self, exc: redis.exceptions.ResponseError) -> bool:
        """Whether ``exc`` says Redis no longer has this library (a restart, ``FUNCTION FLUSH``); it is then loaded
        again on the next call."""
        if "function not found" in str(exc).lower():
            self.loaded = False
            return True
        return False

    def load(self, client: redis.Redis) -> None:
        try:
            client.function_load(self.code, replace=True)
            self.loaded = True
        except redis.exceptions.ResponseError as exc:
            # Redis 6.2 (no FUNCTION) or an ACL without it: the EVALSHA scripts from now on; any other error
            # (READONLY, BUSY, ...) is the caller's to retry
            if isinstance(exc, redis.exceptions.NoPermissionError) or "unknown command" in str(exc).lower():
                self.available = False
            else:
                raise


class Scripts:
    """The Lua steps bound to one client and key prefix (FCALL on Redis >= 7, else EVALSHA; both reloaded after a
    Redis restart)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        code, names = library(keys.prefix, weigher_lua())
        lib = _Library(code)
        for name, body in _bodies(keys.prefix, weigher_lua()).items():
            setattr(self, name, Step(client, client.register_script(body), names[name], lib))


_CHUNK_START = re.compile(r"^(?:local\s|K\.)")
_DEFINES = re.compile(r"^(?:local\s+function\s+(\w+)|local\s+([\w\s,]+?)\s*=|(K\.\w+)\s*=)")
_COMMENT = re.compile(r"--[^\n]*")
_IDENT = re.compile(r"\b(?:K\.\w+|[A-Za-z_]\w*)")


def chunks(text: str) -> list[tuple[set[str], str]]:
    """The top-level definitions of a Lua text, in order: (names it defines, its text). A definition starts at a line
    beginning with ``local`` or ``K.`` in column 0 and runs to the next one."""
    out: list[tuple[set[str], list[str]]] = []
    for line in text.splitlines(keepends=True):
        if _CHUNK_START.match(line) or not out:
            m = _DEFINES.match(line)
            names = set()
            if m:
                names = {m.group(1)} if m.group(1) else {m.group(3)} if m.group(3) else {
                    n.strip() for n in m.group(2).split(",")}
            out.append((names, [line]))
        else:
            out[-1][1].append(line)
    return [(names, "".join(lines)) for names, lines in out]


def refs(text: str) -> set[str]:
    """The identifiers a Lua text names (``K.x`` as one name, and ``K`` with it), comments left out."""
    found = set(_IDENT.findall(_COMMENT.sub("", text)))
    return found | {"K"} if any(n.startswith("K.") for n in found) else found


def script_body(pre: str, body: str) -> str:
    """``body`` preceded by only the prelude definitions it uses, directly or through another definition.

    Every EVALSHA runs its whole script text, definitions included (a script keeps nothing between calls): the
    full prelude cost ~5 µs of Redis CPU per call, more than most steps themselves."""
    parts = chunks(pre)
    need, todo = set(), refs(body)
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        for names, text in parts:
            if name in names:
                todo |= refs(text) - need
    return "".join(text for names, text in parts if names & need) + body


@lru_cache(maxsize=16)
def _bodies(prefix: str, metrics: str) -> dict[str, str]:
    pre = prelude(Keys(prefix), metrics)
    steps = {"place": PLACE, "reindex": REINDEX, "register": REGISTER, "beat": BEAT, "complete": COMPLETE,
             "reap": REAP, "leave": LEAVE, "drain": DRAIN, "gate": GATE_CHECK}
    return {"own": OWN, **{name: script_body(pre, body) for name, body in steps.items()}}


# per-run state of the prelude that a function (which keeps its library's locals between calls) must reset
_RESET = "IDX_ACT = nil\n"


@lru_cache(maxsize=16)
def library(prefix: str, metrics: str) -> tuple[str, dict[str, str]]:
    """The steps as one Redis function library: (its code, step name -> function name). The prelude is defined
    once at load; each function starts by resetting the per-run state (:data:`_RESET`), so a call sees exactly
    what a fresh script run would."""
    import hashlib

    pre = prelude(Keys(prefix), metrics)
    steps = {"own": OWN, "place": PLACE, "reindex": REINDEX, "register": REGISTER, "beat": BEAT,
             "complete": COMPLETE, "reap": REAP, "leave": LEAVE, "drain": DRAIN, "gate": GATE_CHECK}
    tag = "tk_" + hashlib.sha1((pre + "".join(steps.values())).encode()).hexdigest()[:16]
    names = {name: f"{tag}_{name}" for name in steps}
    funcs = "".join(f"redis.register_function('{names[name]}', function(KEYS, ARGV)\n{_RESET}{body}\nend)\n"
                    for name, body in steps.items())
    return f"#!lua name={tag}\n{library_marker(prefix)}{pre}{funcs}", names


def library_marker(prefix: str) -> str:
    """The line that names a library's key prefix, so ``admin clean`` finds the run's libraries (Redis keeps them,
    in its RDB too, after the run's keys are gone)."""
    return f"-- tracekit key prefix: {prefix!r}\n"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def drop_libraries(client: redis.Redis, prefix: str) -> int:
    """Delete the function libraries of this key prefix (every code version); 0 where Redis has no FUNCTION."""
    try:
        libs = client.function_list(library="tk_*", withcode=True)
    except redis.exceptions.ResponseError:
        return 0  # Redis 6.2 or an ACL without FUNCTION: nothing was loaded either
    marker, n = library_marker(prefix), 0
    for lib in libs:  # RESP2 gives each library as a flat [name, value, ...] list
        info = {_text(k): v for k, v in zip(lib[::2], lib[1::2])}
        code = _text(info.get("library_code") or "")
        if code.split("\n", 2)[1:2] == [marker.rstrip("\n")]:
            client.function_delete(_text(info["library_name"]))
            n += 1
    return n
