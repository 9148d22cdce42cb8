defmodule SynapseCore.Telemetry do
  @events [
    {[:synapse, :run, :start], "`system_time`, `monotonic_time`",
     "`agent`, `mode` (`:sync` for `run_sync/3`, `:async` for `run/3`, `:stream` for " <>
       "`run_stream/3`), `node` (where the worker runs; for another node, the one first " <>
       "asked, which hands the run on to a third when its workers have just left; `nil` " <>
       "when no worker was found), " <>
       "`worker` (its index, for a worker of this node), `telemetry_span_context`"},
    {[:synapse, :run, :stop], "`duration`, `monotonic_time`",
     "those of `:start`, and `usage` (a `SynapseCore.Usage`)"},
    {[:synapse, :run, :exception], "`duration`, `monotonic_time`",
     "those of `:start`, and `error` (the `SynapseCore.Error`) and `error_kind` (its kind)"},
    {[:synapse, :tool, :start], "`system_time`, `monotonic_time`",
     "`agent`, `tool` (its name), `tool_call_id`, `run_id`, `retry`, `telemetry_span_context`"},
    {[:synapse, :tool, :stop], "`duration`, `monotonic_time`",
     "those of `:start`; the call returned a value for the model"},
    {[:synapse, :tool, :exception], "`duration`, `monotonic_time`",
     "those of `:start`, and `reason` (the retry prompt the model gets: the tool raised, " <>
       "returned `{:error, _}`, timed out or had invalid arguments)"},
    {[:synapse, :worker, :start], "`system_time`",
     "`agent`, `worker` (its index), `location` (`:local` or `{:remote, address}`), " <>
       "`os_pid` (`nil`: no process is spawned yet), `attempt`"},
    {[:synapse, :worker, :ready], "`duration` (since its start)",
     "`agent`, `worker`, `location`, `os_pid` (the Python process's OS pid, as " <>
       "`SynapseCore.Agent.workers/1` gives it; always `nil` for a remote worker, " <>
       "whose process is not this node's)"},
    {[:synapse, :worker, :exit], "`system_time`",
     "`agent`, `worker`, `location`, `os_pid` (the lost process's; `nil` if it was " <>
       "lost before it spawned), `error` (a `SynapseCore.Error` saying why)"},
    {[:synapse, :worker, :restart], "`delay` (milliseconds before the next start)",
     "`agent`, `worker`, `location`, `os_pid` (that of the `:exit` just before), `attempt`"},
    {[:synapse, :stream, :backpressure],
     "`count` (times the worker had to wait), `duration` (time it waited in all)",
     "`agent` (or bridge), and the run's `telemetry_span_context`; emitted when a stream " <>
       "of a worker of this node ends, if its producer had to wait for its consumer " <>
       "(`:window` events unacknowledged), just before the run's `:stop` or `:exception`"}
  ]

  @moduledoc """
  [`:telemetry`](https://hexdocs.pm/telemetry) events, when the application
  has `:telemetry` (Synapse does not depend on it: when the module is not
  loaded, emitting an event costs one function-exported check).

  Durations are in `:native` time units, as `:telemetry.span/3` reports
  them (`System.convert_time_unit/3` converts them). `telemetry_span_context`
  ties a `:start` to its `:stop` or `:exception`.

  | event | measurements | metadata |
  |---|---|---|
  #{Enum.map_join(@events, "\n", fn {event, measurements, metadata} -> "| `#{inspect(event)}` | #{measurements} | #{metadata} |" end)}

  A run's `:start` is emitted in the calling process, once a worker is
  picked (a run that cannot start emits its `:start` and `:exception` at
  once; invalid options raise before anything is emitted). Its `:stop` or
  `:exception` is emitted in the process that receives its result through
  Synapse: the caller of `run_sync/3`, `await/2` or `yield/2` (or of
  `cancel/1`, which takes the final answer out of its mailbox), the
  enumerator of a `run_stream/3` stream (halting it early ends the run with
  a `:cancelled` `:exception`). A run streamed to a `:stream_to` receiver
  emits them from a process of Synapse's that is told the run's outcome as
  it answers (the run's tool runner or, for a run on another node of the
  cluster, an observer on the caller's node). A run started with `run/3`
  that is never awaited emits no `:stop`.

  Attach to all of them with

      :telemetry.attach_many("my-handler", SynapseCore.Telemetry.events(), &handle/4, nil)
  """

  @compile {:no_warn_undefined, :telemetry}

  @doc "Every event Synapse emits."
  @spec events() :: [[atom()]]
  def events, do: Enum.map(@events, &elem(&1, 0))

  @doc false
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if function_exported?(:telemetry, :execute, 3),
      do: :telemetry.execute(event, measurements, metadata)

    :ok
  end

  @doc false
  @spec enabled?() :: boolean()
  def enabled?, do: function_exported?(:telemetry, :execute, 3)

  @typedoc false
  @type span :: {integer(), map()}

  @doc false
  # A run's `:start`, when `:telemetry` is loaded: its span, or nil.
  @spec run_start(map()) :: span() | nil
  def run_start(metadata), do: if(enabled?(), do: start([:synapse, :run], metadata))

  @doc false
  # A run's `:stop` or `:exception`, from its outcome (or its usage, as a
  # tool runner is told it). Returns the outcome.
  @spec run_stop(span() | nil, outcome) :: outcome when outcome: term()
  def run_stop(nil, outcome), do: outcome

  def run_stop(span, {:ok, %SynapseCore.Result{usage: usage}} = outcome),
    do: run_stopped(span, usage, outcome)

  def run_stop(span, {:ok, %SynapseCore.Usage{} = usage} = outcome),
    do: run_stopped(span, usage, outcome)

  def run_stop(span, {:error, %SynapseCore.Error{kind: kind} = error} = outcome) do
    stop([:synapse, :run], :exception, span, %{error: error, error_kind: kind})
    outcome
  end

  defp run_stopped(span, usage, outcome) do
    stop([:synapse, :run], :stop, span, %{usage: usage})
    outcome
  end

  @doc false
  # `[:synapse, :stream, :backpressure]` for a stream that ended, if it
  # waited for its consumer. `handle` is its NIF call handle.
  @spec backpressure(term(), reference(), span() | nil) :: :ok
  def backpressure(agent, handle, span) do
    with true <- enabled?(),
         {count, nanoseconds} when count > 0 <- SynapseCore.Native.run_waits(handle) do
      context =
        case span do
          {_started, %{telemetry_span_context: context}} -> context
          nil -> nil
        end

      execute(
        [:synapse, :stream, :backpressure],
        %{count: count, duration: System.convert_time_unit(nanoseconds, :nanosecond, :native)},
        %{agent: agent, telemetry_span_context: context}
      )
    else
      _ -> :ok
    end
  end

  @doc false
  # Emits `prefix ++ [:start]`; returns what `stop/4` needs.
  @spec start([atom()], map()) :: {integer(), map()}
  def start(prefix, metadata) do
    metadata = Map.put(metadata, :telemetry_span_context, make_ref())
    now = System.monotonic_time()

    execute(
      prefix ++ [:start],
      %{system_time: System.system_time(), monotonic_time: now},
      metadata
    )

    {now, metadata}
  end

  @doc false
  # Emits `prefix ++ [suffix]` (`:stop` or `:exception`) for a `start/2`.
  @spec stop([atom()], :stop | :exception, {integer(), map()}, map()) :: :ok
  def stop(prefix, suffix, {started, metadata}, extra) do
    now = System.monotonic_time()

    execute(
      prefix ++ [suffix],
      %{duration: now - started, monotonic_time: now},
      Map.merge(metadata, extra)
    )
  end

  @doc false
  # Loads `:telemetry` if the application has it, so that `execute/3`'s
  # check sees it in interactive mode too (a release loads it at boot).
  @spec load() :: :ok
  def load do
    Code.ensure_loaded(:telemetry)
    :ok
  end
end
