-- wrk_post.lua, paced: each connection waits BENCH_DELAY_MS before each request, so the offered load (connections
-- x 1000 / delay requests per second, at most) does not depend on how fast the target answers.
-- BENCH_DIR is the directory of these scripts (set by the harness).
dofile(os.getenv("BENCH_DIR") .. "/wrk_post.lua")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
delay = function()
  return pause
end
