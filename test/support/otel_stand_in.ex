defmodule :otel_propagator_text_map do
  @moduledoc false
  # An in-repo stand-in for OpenTelemetry's `otel_propagator_text_map`
  # (opentelemetry_api; hex is out of reach here), compiled only in the test
  # environment: `inject/1` writes the calling process's current context
  # into a carrier (a list of header pairs) as a W3C `traceparent`, as the
  # real one does with its default propagator. Here the current context is
  # what `put_current/1` set in the process, or none.

  @key {__MODULE__, :traceparent}

  def put_current(traceparent), do: Process.put(@key, traceparent)

  def inject(carrier) when is_list(carrier) do
    case Process.get(@key) do
      nil -> carrier
      traceparent -> carrier ++ [{"traceparent", traceparent}]
    end
  end
end
