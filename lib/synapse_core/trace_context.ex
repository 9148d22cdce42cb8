defmodule SynapseCore.TraceContext do
  @moduledoc """
  The caller's trace context, carried with each run to the worker, so that
  the spans the agent makes in Python (pydantic-ai's instrumentation, with
  Logfire or the OpenTelemetry SDK) join the caller's trace as children of
  the caller's current span.

  A run takes the `:trace_context` option:

    * not given (`nil`, the default): the calling process's current
      OpenTelemetry context, when the application has OpenTelemetry
      (`opentelemetry_api`, whose `:otel_propagator_text_map.inject/1`
      writes it with the application's propagators: W3C `traceparent` and
      `tracestate` by default, `baggage` too when configured); none
      otherwise. Synapse does not depend on it: without it, this costs
      one function-exported check.
    * a map (or keyword list) of headers, e.g.
      `%{"traceparent" => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
      for a context from elsewhere (an incoming request's headers). Keys
      are case-insensitive (sent lowercase); values are printable ASCII; a
      `traceparent` must be a valid W3C one.
    * `%{}`: no trace context.

  In the worker, the headers are extracted with Python OpenTelemetry's
  global propagator (W3C Trace Context and Baggage unless the Python
  application configures others) and the run, deps factory included, runs
  in that context. Spans are only made when the Python agent is
  instrumented (`Agent(..., capabilities=[Instrumentation()])`,
  `Agent.instrument_all()` or `logfire.instrument_pydantic_ai()`) and a
  tracer provider exports them;
  the context reaches the worker either way.

  A run on another node of the cluster carries the context of its caller.
  """

  @compile {:no_warn_undefined, :otel_propagator_text_map}

  # W3C Trace Context: version-traceid-parentid-flags, lowercase hex; a
  # version after 00 may append fields, version 00 may not. Python's
  # propagator silently drops a traceparent that is not so, or is longer
  # than 512 characters (and the run's spans start a trace of their own).
  @traceparent ~r/\A(?:00-(?=.{52}\z)|(?!ff|00)[0-9a-f]{2}-)(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-|\z)/
  @traceparent_max_length 512

  @doc false
  @spec load() :: :ok
  def load do
    Code.ensure_loaded(:otel_propagator_text_map)
    :ok
  end

  @doc false
  # The calling process's OpenTelemetry context as headers, or `%{}`.
  @spec current() :: %{String.t() => String.t()}
  def current do
    if function_exported?(:otel_propagator_text_map, :inject, 1) do
      case cast(:otel_propagator_text_map.inject([])) do
        {:ok, headers} ->
          headers

        {:error, message} ->
          raise ArgumentError, "the OpenTelemetry context cannot be carried: #{message}"
      end
    else
      %{}
    end
  end

  @doc false
  # The `:trace_context` option's cast.
  @spec cast(term()) :: {:ok, %{String.t() => String.t()} | nil} | {:error, String.t()}
  def cast(nil), do: {:ok, nil}

  def cast(headers) when is_map(headers) or is_list(headers) do
    if is_list(headers) and List.improper?(headers),
      do: {:error, "expected a map or a list of header pairs, got an improper list"},
      else: cast_headers(headers)
  end

  def cast(_other), do: {:error, "expected a map of trace context headers"}

  defp cast_headers(headers) do
    Enum.reduce_while(headers, {:ok, %{}}, fn
      {key, value}, {:ok, acc} when is_binary(key) and is_binary(value) ->
        key = String.downcase(key)

        case header(key, value) do
          :ok when is_map_key(acc, key) ->
            {:halt, {:error, "the header #{inspect(key)} is given twice"}}

          :ok ->
            {:cont, {:ok, Map.put(acc, key, value)}}

          {:error, message} ->
            {:halt, {:error, message}}
        end

      other, _acc ->
        {:halt, {:error, "expected string header names and values, got #{inspect(other)}"}}
    end)
  end

  defp header("", _value), do: {:error, "a header name is empty"}

  defp header(key, value) do
    cond do
      not printable?(key) or String.contains?(key, [" ", ":"]) ->
        {:error, "#{inspect(key)} is not a header name"}

      not printable?(value) ->
        {:error, "the value of #{inspect(key)} is not printable ASCII"}

      key == "traceparent" and
          (byte_size(value) > @traceparent_max_length or not Regex.match?(@traceparent, value)) ->
        {:error, "#{inspect(value)} is not a W3C traceparent (version-traceid-spanid-flags)"}

      true ->
        :ok
    end
  end

  defp printable?(text), do: text |> :binary.bin_to_list() |> Enum.all?(&(&1 in 0x20..0x7E))
end
