-- wrk script for the governance benchmark: like wrk_post.lua, but every request carries a different
-- Idempotency-Key, so that the idempotency policy runs every request instead of replaying the first.
--   BENCH_BODY        the request body (JSON text)
--   BENCH_AUTH        the Authorization header value (optional)
--   BENCH_KEY_PREFIX  the key prefix, unique per run (set by run_engine.py); keys are <prefix>-<thread>-<n>
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local prefix = os.getenv("BENCH_KEY_PREFIX") or tostring(os.time())
local counter = 0
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = string.format("%s-%d-%d", prefix, thread_id or 0, counter)
  return wrk.format()
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
