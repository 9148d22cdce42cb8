# One run_sync round trip on pydantic-ai's `test` model, the example agent:
#
#   MIX_ENV=test mix run bench/roundtrip.exs [--calls 500]
#
# Prints p50 and p99 of sequential calls after a warm-up. The time includes
# the whole pydantic-ai run in the worker, not only the transport.
{opts, _} = OptionParser.parse!(System.argv(), strict: [calls: :integer])
calls = Keyword.get(opts, :calls, 500)

{:ok, _} =
  SynapseCore.start_agent(
    name: :roundtrip,
    agent: "synapse_examples:support_agent",
    python_path: ["examples/python"],
    model: "test"
  )

for _ <- 1..50, do: {:ok, _} = SynapseCore.Agent.run_sync(:roundtrip, "hello")

times =
  1..calls
  |> Enum.map(fn _ ->
    started = System.monotonic_time(:microsecond)
    {:ok, _} = SynapseCore.Agent.run_sync(:roundtrip, "Where is my order?")
    System.monotonic_time(:microsecond) - started
  end)
  |> Enum.sort()

percentile = fn p -> Enum.at(times, min(calls - 1, trunc(calls * p))) end

IO.puts(
  "run_sync, test model, #{calls} sequential calls: " <>
    "p50 #{percentile.(0.5)} µs, p99 #{percentile.(0.99)} µs"
)
