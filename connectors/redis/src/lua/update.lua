-- Moves users' state forward only, for a run of fixes of one tenant (store.rs, UPDATE_SCRIPT).
-- KEYS: geo, seen, tenants, then one hash per fix. ARGV: tenant, then per fix 11 values:
-- user, ts, lat, lon, device, seq, speed, heading, accuracy, battery, received_at.
-- Returns how many fixes were applied.
local geo, polar, seen, g, p, n = {}, {}, {}, 0, 0, 0
local call, num = redis.call, tonumber
for i = 4, #KEYS do
  local a = (i - 4) * 11
  local key, ts = KEYS[i], ARGV[a + 3]
  local cur = call('HGET', key, 'ts')
  if not cur or num(cur) < num(ts) then
    local user, lat, lon = ARGV[a + 2], ARGV[a + 4], ARGV[a + 5]
    call('HSET', key, 'ts', ts, 'lat', lat, 'lon', lon,
      'device_id', ARGV[a + 6], 'seq', ARGV[a + 7], 'speed_mps', ARGV[a + 8],
      'heading_deg', ARGV[a + 9], 'accuracy_m', ARGV[a + 10], 'battery_pct', ARGV[a + 11],
      'received_at', ARGV[a + 12])
    local y = num(lat)
    if y > 85.05112878 or y < -85.05112878 then
      p = p + 1
      polar[p] = user
    else
      geo[3 * g + 1], geo[3 * g + 2], geo[3 * g + 3] = lon, lat, user
      g = g + 1
    end
    seen[2 * n + 1], seen[2 * n + 2] = ts, user
    n = n + 1
  end
end
if g > 0 then
  call('GEOADD', KEYS[1], unpack(geo))
end
if p > 0 then
  call('ZREM', KEYS[1], unpack(polar))
end
if n > 0 then
  call('ZADD', KEYS[2], unpack(seen))
  call('SADD', KEYS[3], ARGV[1])
end
return n
