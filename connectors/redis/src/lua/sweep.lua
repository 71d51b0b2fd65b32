-- Forgets users last seen before ARGV[1] (store.rs, SWEEP): KEYS geo, seen, then one hash per
-- candidate user (ARGV[2..]). Returns how many were removed.
local n = 0
for i = 3, #KEYS do
  local user = ARGV[i - 1]
  local seen = redis.call('ZSCORE', KEYS[2], user)
  if seen and tonumber(seen) < tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], user)
    redis.call('ZREM', KEYS[2], user)
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
