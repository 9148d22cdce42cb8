# The soak: concurrent callers while faults are injected (workers and
# shepherds killed or stopped, floods, tools failing with bad bytes, dropped
# Run structs, agents started and stopped in races), then an account of
# every call and a check for leaks. Loopback and Unix sockets only.
#
#   MIX_ENV=test mix run bench/soak.exs [--duration SECONDS] [--callers N] [--workers N]
#     [--kill-every MS] [--faults worker_kill,shepherd_kill,...]
#
# MIX_ENV=test because its agents are the test fixtures. Exits non-zero if a
# call, start or stop went unanswered or untyped, or something leaked.
Code.require_file("soak/soak.ex", __DIR__)

alias SynapseCore.Bench.Soak

{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [
      duration: :integer,
      callers: :integer,
      workers: :integer,
      kill_every: :integer,
      faults: :string
    ]
  )

faults =
  case opts[:faults] do
    nil ->
      Soak.faults()

    list ->
      for fault <- String.split(list, ",", trim: true) do
        Enum.find(Soak.faults(), &(Atom.to_string(&1) == fault)) ||
          raise ArgumentError, "unknown fault #{fault}; the faults: #{inspect(Soak.faults())}"
      end
  end

started = System.monotonic_time(:millisecond)

report =
  Soak.run(
    duration: Keyword.get(opts, :duration, 60) * 1_000,
    callers: Keyword.get(opts, :callers, 64),
    workers: Keyword.get(opts, :workers, 2),
    kill_every: Keyword.get(opts, :kill_every, 700),
    faults: faults,
    log: &IO.puts/1
  )

IO.puts("""
soak: #{report.duration_ms} ms of calls (#{System.monotonic_time(:millisecond) - started} ms in all), #{report.callers} callers, #{report.workers_per_agent} workers per agent
faults: #{inspect(report.faults)}
injected: #{inspect(report.injected)}
calls: #{report.calls}
calls by kind: #{inspect(report.calls_by_kind)}
outcomes: #{inspect(report.outcomes)}
starts and stops: #{inspect(report.lifecycle)}
before: #{inspect(report.before)}
after:  #{inspect(report.after)}
leaks: #{inspect(report.leaks)}
empty (before any agent): #{inspect(report.empty)}
final (every agent stopped): #{inspect(report.final)}
final leaks: #{inspect(report.final_leaks)}
""")

case Soak.failures(report) do
  [] ->
    :ok

  failures ->
    IO.puts("FAILED: #{inspect(failures)}")
    System.halt(1)
end
