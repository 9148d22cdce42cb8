defmodule SynapseCore.TraceContextTest do
  # The caller's trace context reaches the worker: the spans of pydantic-ai's
  # instrumentation there (an in-memory exporter of the Python OpenTelemetry
  # SDK, synapse_fixtures.traced) are children of the caller's span. The
  # caller's OpenTelemetry context comes from the in-repo stand-in of
  # `:otel_propagator_text_map` (test/support/otel_stand_in.ex). On each
  # transport a local call takes.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.Agent

  @moduletag capture_log: true

  @trace "4bf92f3577b34da6a3ce929d0e0e4736"
  @parent "00f067aa0ba902b7"

  defp start_traced! do
    start_fixture_agent!("traced_agent", agent: "synapse_fixtures.traced:traced_agent")
  end

  # The spans the worker's agents finished so far.
  defp spans(name) do
    {:ok, %{output: json}} = Agent.run_sync(name, "spans?", trace_context: %{})
    {:ok, spans} = SynapseCore.JSON.decode(json)
    spans
  end

  # The runs whose parent is the caller's span `parent`, in trace `trace`.
  defp children(spans, trace, parent) do
    for %{"trace_id" => ^trace, "parent_id" => ^parent, "remote_parent" => true} = span <- spans,
        do: span
  end

  defp traceparent(trace, parent), do: "00-#{trace}-#{parent}-01"

  test "a run given a traceparent: the worker's spans join that trace, under that span" do
    name = start_traced!()

    {:ok, _} =
      Agent.run_sync(name, "hi", trace_context: %{"traceparent" => traceparent(@trace, @parent)})

    spans = spans(name)
    assert [%{"span_id" => run_span}] = children(spans, @trace, @parent)
    # The run's model request is a child of the run's span.
    assert Enum.any?(spans, &match?(%{"trace_id" => @trace, "parent_id" => ^run_span}, &1))
  end

  test "the caller's OpenTelemetry context is carried by default, by every kind of run" do
    name = start_traced!()
    traces = for _ <- 1..3, do: Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)

    for {trace, mode} <- Enum.zip(traces, [:sync, :async, :stream]) do
      :otel_propagator_text_map.put_current(traceparent(trace, @parent))

      case mode do
        :sync -> {:ok, _} = Agent.run_sync(name, "hi")
        :async -> {:ok, _} = name |> Agent.run("hi") |> elem(1) |> Agent.await()
        :stream -> [_ | _] = name |> Agent.run_stream("hi") |> Enum.to_list()
      end
    end

    :otel_propagator_text_map.put_current(nil)
    spans = spans(name)

    for trace <- traces do
      assert [_run] = children(spans, trace, @parent)
    end
  end

  test "trace_context: %{} sends none, whatever the caller's context" do
    name = start_traced!()
    :otel_propagator_text_map.put_current(traceparent(@trace, @parent))

    {:ok, _} = Agent.run_sync(name, "hi", trace_context: %{})

    :otel_propagator_text_map.put_current(nil)
    spans = spans(name)
    assert spans != []
    assert children(spans, @trace, @parent) == []
    refute Enum.any?(spans, & &1["remote_parent"])
  end

  test "trace contexts that cannot be carried are refused before the run" do
    # Options are checked before any worker is looked for.
    name = unique_name()

    for {bad, message} <- [
          {%{"traceparent" => "00-xyz-00f067aa0ba902b7-01"}, "is not a W3C traceparent"},
          {%{"traceparent" => traceparent(String.duplicate("0", 32), @parent)},
           "is not a W3C traceparent"},
          # Version 00 has exactly four fields; only a later version may add
          # some (Python's propagator drops any other, and the run its trace).
          {%{"traceparent" => traceparent(@trace, @parent) <> "-00"}, "is not a W3C traceparent"},
          {%{"traceparent" => "01-#{@trace}-#{@parent}-01-" <> String.duplicate("a", 500)},
           "is not a W3C traceparent"},
          {%{"tracestate" => "vendor=caf\u00e9"}, "is not printable ASCII"},
          {%{"traceparent" => <<0xFF>>}, "is not printable ASCII"},
          {%{"trace parent" => "x"}, "is not a header name"},
          {[
             {"Traceparent", traceparent(@trace, @parent)},
             {"traceparent", traceparent(@trace, @parent)}
           ], "is given twice"},
          {%{traceparent: "x"}, "expected string header names and values"},
          {"00-#{@trace}-#{@parent}-01", "expected a map of trace context headers"}
        ] do
      error = assert_raise ArgumentError, fn -> Agent.run_sync(name, "hi", trace_context: bad) end
      assert error.message =~ message
    end
  end
end
