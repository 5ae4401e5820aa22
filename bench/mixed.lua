-- wrk script for bench/throughput.py's mixed row: one request in ten is a PUT of the
-- bench key (a form body, as etcd's v2 API takes it), the rest GETs of it.
local n = 0
local put_body = "value=mixed"

request = function()
  n = n + 1
  if n % 10 == 0 then
    return wrk.format("PUT", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
                      put_body)
  end
  return wrk.format("GET", nil, nil, nil)
end
