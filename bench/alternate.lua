-- wrk script for the peak durable-write scenario: every request is a step, strictly
-- alternating /next and /previous per wrk thread. Because the sends alternate, the cursor
-- can drift from where bench.sh parked it (the middle of the table) by at most the number
-- of requests in flight, so the run does not pin against a bound and turn into cheap 409s.
-- GET is used, as the original wrk2 load test did; fibd treats GET and POST alike here.
--
-- Kept as cheap as possible, because wrk shares one core with nothing else to spare: the
-- two requests are formatted once, and there is no response() callback (wrk then skips
-- Lua for every answer). Answers are counted by status from fibd's own /metrics instead
-- (bench/report.py), and wrk reports any non-2xx count itself.

local requests
local n = 0

function init(args)
  requests = { wrk.format("GET", "/next"), wrk.format("GET", "/previous") }
end

function request()
  n = n + 1
  return requests[(n % 2) + 1]
end
