defmodule SynapseCore.Shepherd.Log do
  @moduledoc false
  # What a worker writes, turned into Logger entries: one entry per Python
  # log record (from the worker's log pipe, one JSON object per line), one
  # per line of `print()` output (stdout, at :info) and one per line of raw
  # stderr (C extensions, a dying interpreter: at :warning). The entries
  # carry the process's Logger metadata (the agent, the worker's index and
  # OS pid) and the record's Python logger as `:python_logger`.
  #
  # Entries are rate limited per worker: a token bucket of
  # `@burst` entries refilled at `@rate` a second. What exceeds it is
  # counted, not logged, and summed up in one warning ("N lines of output
  # dropped") at most once a second, so a flooding worker costs the BEAM
  # neither memory nor an unbounded log.
  #
  # The last lines of trouble (stderr, and records at warning or above) are
  # kept for the error of a worker that fails to start.

  require Logger

  @rate 200
  @burst 1_000
  @tail 20

  @typedoc "The rate limiter, the dropped count and the tail."
  @type t :: %__MODULE__{
          tokens: float(),
          refilled_at: integer(),
          dropped: non_neg_integer(),
          tail: :queue.queue(String.t()),
          tail_length: non_neg_integer()
        }

  defstruct tokens: @burst * 1.0,
            refilled_at: nil,
            dropped: 0,
            tail: :queue.new(),
            tail_length: 0

  @doc "Entries a second a worker may log, sustained."
  @spec rate() :: pos_integer()
  def rate, do: @rate

  @spec new() :: t()
  def new, do: %__MODULE__{refilled_at: now()}

  @doc """
  Logs `frame` (or counts it as dropped). Returns `{:status, map}` for a
  status record of the worker, which is not a log entry, and the new state.
  Starts dropping when the bucket is empty: the caller then schedules a
  `flush/1` within a second (`:schedule_flush` in the first element).
  """
  @spec handle(t(), {:stdout | :stderr | :log, binary()}) ::
          {nil | :schedule_flush | {:status, map()}, t()}
  def handle(log, {:log, ~s({"status":) <> _ = line}) do
    case SynapseCore.JSON.decode(line) do
      {:ok, %{"status" => status}} when is_map(status) -> {{:status, status}, log}
      _other -> handle(log, {:stderr, line})
    end
  end

  def handle(log, {stream, line}) do
    log = refill(log)
    trouble? = level(stream, line) in [:warning, :error, :critical]

    if log.tokens >= 1 or trouble? do
      {level, message, metadata} = entry(stream, line)
      log = if trouble?, do: keep(log, message), else: log

      if log.tokens >= 1 do
        Logger.log(level, message, metadata)
        {nil, %{log | tokens: log.tokens - 1}}
      else
        drop(log)
      end
    else
      drop(log)
    end
  end

  defp drop(%__MODULE__{dropped: 0} = log), do: {:schedule_flush, %{log | dropped: 1}}
  defp drop(log), do: {nil, %{log | dropped: log.dropped + 1}}

  @doc "Logs the summary of what was dropped since the last one, if anything."
  @spec flush(t()) :: t()
  def flush(%__MODULE__{dropped: 0} = log), do: log

  def flush(log) do
    Logger.warning(
      "#{log.dropped} lines of the worker's output dropped " <>
        "(more than #{@rate} a second, in bursts of up to #{@burst})"
    )

    %{log | dropped: 0}
  end

  @doc "Adds a line of the shepherd's own (a spawn failure) to the tail."
  @spec keep(t(), String.t()) :: t()
  def keep(log, text) do
    tail = :queue.in(text, log.tail)

    if log.tail_length >= @tail,
      do: %{log | tail: :queue.drop(tail)},
      else: %{log | tail: tail, tail_length: log.tail_length + 1}
  end

  @doc "The last lines of trouble, oldest first."
  @spec tail(t()) :: [String.t()]
  def tail(log), do: :queue.to_list(log.tail)

  defp refill(log) do
    now = now()
    tokens = min(log.tokens + (now - log.refilled_at) * @rate / 1_000, @burst * 1.0)
    %{log | tokens: tokens, refilled_at: now}
  end

  defp now, do: System.monotonic_time(:millisecond)

  # The level of a line without decoding it: records start with their
  # level number (see synapse_python._logging), so a flood of debug records
  # is dropped without being decoded.
  defp level(:log, ~s({"level":) <> rest) do
    case Integer.parse(rest) do
      {level, _} -> level(level)
      :error -> :warning
    end
  end

  defp level(:stdout, _line), do: :info
  defp level(_stream, _line), do: :warning

  # A record of Python's logging, as the worker writes it (see
  # synapse_python._logging): level number, logger, message, exception.
  defp entry(:log, line) do
    case SynapseCore.JSON.decode(line) do
      {:ok, %{"level" => level, "message" => message} = record}
      when is_integer(level) and is_binary(message) ->
        message =
          case record["exception"] do
            exception when is_binary(exception) and exception != "" ->
              message <> "\n" <> exception

            _ ->
              message
          end

        {level(level), message, [python_logger: record["logger"]]}

      _other ->
        {:warning, text(line), [python_stream: :log]}
    end
  end

  defp entry(:stdout, line), do: {:info, text(line), [python_stream: :stdout]}
  defp entry(:stderr, line), do: {:warning, text(line), [python_stream: :stderr]}

  # Python's numeric levels; custom ones fall in the band below them.
  defp level(level) when level < 20, do: :debug
  defp level(level) when level < 30, do: :info
  defp level(level) when level < 40, do: :warning
  defp level(level) when level < 50, do: :error
  defp level(_level), do: :critical

  # Output is bytes: what is not UTF-8 is shown escaped rather than handed
  # to formatters that expect text.
  defp text(line) do
    if String.valid?(line), do: line, else: inspect(line, binaries: :as_binaries)
  end
end
