-- wrk script for the Keel benches: the request comes from the environment, and the report is
-- one machine-readable line.
--   BENCH_METHOD  GET (default) or POST
--   BENCH_BODY    a JSON body (sent with Content-Type: application/json)
--   BENCH_TOKEN   sent as Authorization: Bearer <token>
-- Output: RESULT <requests/s> <p50 ms> <p99 ms> <non-2xx/3xx answers> <socket errors>

local method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
local token = os.getenv("BENCH_TOKEN")

wrk.method = (method ~= nil and method ~= "") and method or "GET"
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  local rps = 0
  if summary.duration > 0 then
    rps = summary.requests / summary.duration * 1e6
  end
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n",
    rps, latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, errors))
end
