# The soak: concurrent callers while workers are killed at random, then an
# account of every call and a check for leaks. Loopback and Unix sockets only.
#
#   MIX_ENV=test mix run bench/soak.exs [--duration SECONDS] [--callers N] [--workers N]
#
# MIX_ENV=test because its agents are the test fixtures. Exits non-zero if a
# call went unanswered or untyped, or something leaked.
Code.require_file("soak/soak.ex", __DIR__)

{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [duration: :integer, callers: :integer, workers: :integer, kill_every: :integer]
  )

report =
  SynapseCore.Bench.Soak.run(
    duration: Keyword.get(opts, :duration, 60) * 1_000,
    callers: Keyword.get(opts, :callers, 64),
    workers: Keyword.get(opts, :workers, 2),
    kill_every: Keyword.get(opts, :kill_every, 700),
    log: &IO.puts/1
  )

IO.puts("""
soak: #{report.duration_ms} ms, #{report.callers} callers, #{report.workers_per_agent} workers per agent
kills: #{report.kills}
calls: #{report.calls}
outcomes: #{inspect(report.outcomes)}
before: #{inspect(report.before)}
after:  #{inspect(report.after)}
leaks: #{inspect(report.leaks)}
""")

bad =
  Map.drop(report.outcomes, [
    :ok,
    :worker_exited,
    :unavailable,
    :cancelled,
    :timeout,
    :halted,
    :cancelled_by_caller
  ])

if report.leaks != [] or bad != %{} do
  IO.puts("FAILED: #{inspect(%{leaks: report.leaks, unexpected: bad})}")
  System.halt(1)
end
