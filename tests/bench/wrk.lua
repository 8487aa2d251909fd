-- wrk script of `make bench`: spreads requests over tenants, uniformly or by Zipf's law.
-- Arguments (after `--`): tenants file (a Lua chunk returning {{id, api_key}, ...}),
-- distribution (uniform | zipf), Zipf exponent, method (GET | POST), path, and optionally
-- an X-Consistency-Token every request sends.
-- done() prints one line `WRK_JSON {...}` that tests/bench/load.py parses.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_number", counter)
end

local requests, cdf, count

local function zipf_cdf(n, exponent)
  local weights, total = {}, 0
  for rank = 1, n do
    weights[rank] = 1 / rank ^ exponent
    total = total + weights[rank]
  end
  local acc, out = 0, {}
  for rank = 1, n do
    acc = acc + weights[rank] / total
    out[rank] = acc
  end
  out[n] = 1
  return out
end

function init(args)
  local tenants = dofile(args[1])
  local distribution, exponent, method, path = args[2], tonumber(args[3]), args[4], args[5]
  local token = args[6]
  local body = nil
  if method == "POST" then
    body = '{"first_name": "Bench", "last_name": "User", "email": "bench@example.com"}'
  end
  requests = {}
  for i, tenant in ipairs(tenants) do
    local headers = {["X-Tenant-ID"] = tenant[1], ["Authorization"] = "Bearer " .. tenant[2]}
    if body then headers["Content-Type"] = "application/json" end
    if token and token ~= "" then headers["X-Consistency-Token"] = token end
    requests[i] = wrk.format(method, path, headers, body)
  end
  count = #requests
  if distribution == "zipf" then cdf = zipf_cdf(count, exponent) end
  math.randomseed(os.time() * 1000 + (thread_number or 0))
end

local function pick()
  if not cdf then return math.random(count) end
  local u, lo, hi = math.random(), 1, count
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  return requests[pick()]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
