-- wrk script: POST signed VAPI reports, each with a call id of its own.
-- Arguments (after --): prefix file, suffix file, VAPI secret, call id tag.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function slurp(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  return data
end

function init(args)
  prefix, suffix = slurp(args[1]), slurp(args[2])
  headers = {["Content-Type"] = "application/json", ["x-vapi-secret"] = args[3]}
  tag = args[4] .. "-" .. tid .. "-"
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, headers, prefix .. tag .. counter .. suffix)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH-JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
