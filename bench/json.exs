# The cost of SynapseCore.JSON on small payloads, on the caller's scheduler
# (what SynapseCore.JSON picks for them) against a dirty scheduler (what it
# picks for large ones), in one run:
#
#   ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/json.exs
#
# Schedulers that do not spin while idle, as bench/run runs them: a dirty
# scheduler then sleeps between calls, and each call hands the process to it
# and back.
alias SynapseCore.Native

calls = 20_000
payload = %{"order_id" => 42, "status" => "shipped", "items" => [1, 2, 3]}
{:ok, json} = SynapseCore.JSON.encode(payload)

cpu_us = fn ->
  [_, fields] = String.split(File.read!("/proc/#{System.pid()}/stat"), ") ", parts: 2)
  fields = String.split(fields, " ")
  # utime + stime, in clock ticks of 10 ms.
  (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * 10_000
end

contenders = [
  {"encode, normal scheduler", fn -> Native.json_encode(payload) end},
  {"encode, dirty scheduler", fn -> Native.json_encode_dirty(payload) end},
  {"decode, normal scheduler", fn -> Native.json_decode(json) end},
  {"decode, dirty scheduler", fn -> Native.json_decode_dirty(json) end}
]

for round <- 1..3, {name, call} <- contenders do
  cpu = cpu_us.()
  started = System.monotonic_time(:microsecond)
  for _ <- 1..calls, do: {:ok, _} = call.()
  wall = (System.monotonic_time(:microsecond) - started) / calls

  IO.puts(
    "round #{round} #{name}: #{Float.round(wall, 2)} µs wall, #{div(cpu_us.() - cpu, calls)} µs CPU per call"
  )
end
