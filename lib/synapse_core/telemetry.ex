defmodule SynapseCore.Telemetry do
  @events [
    {[:synapse, :run, :start], "`system_time`, `monotonic_time`",
     "`agent`, `mode` (`:sync`, `:async` or `:stream`), `node` (where the worker runs), `telemetry_span_context`"},
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
     "`agent`, `worker` (its index), `location` (`:local` or `{:remote, address}`), `attempt`"},
    {[:synapse, :worker, :ready], "`duration` (since its start)",
     "`agent`, `worker`, `location`, `os_pid`"},
    {[:synapse, :worker, :exit], "`system_time`",
     "`agent`, `worker`, `location`, `os_pid`, `error` (a `SynapseCore.Error` saying why)"},
    {[:synapse, :worker, :restart], "`delay` (milliseconds before the next start)",
     "`agent`, `worker`, `location`, `attempt`"},
    {[:synapse, :stream, :backpressure], "`count` (waits), `duration` (time spent waiting)",
     "`agent`; emitted when a stream ends, if its producer had to wait for its consumer"}
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

  A run's `:stop` or `:exception` is emitted in the process that receives
  its result through Synapse (`run_sync/3`, `await/2`, `yield/2`, a
  `run_stream/3` stream); a run streamed to a `:stream_to` receiver emits
  them when the receiver calls `SynapseCore.Agent.ack/2` on its final event
  or, if it never does, not at all. Attach to all of them with

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
