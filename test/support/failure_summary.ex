defmodule SynapseCore.FailureSummary do
  @moduledoc false
  # An ExUnit formatter that prints every failure again after the suite,
  # next to its totals. The CLI formatter prints a failure when it happens,
  # among hundreds of lines of other tests' output: a log cut to its head
  # and tail (as CI keeps it) would lose it. Each failure keeps its first
  # lines here; the full report is still the one printed as it happened.

  use GenServer

  @lines 40

  @impl true
  def init(_opts), do: {:ok, []}

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{state: {:failed, failures}} = test}, acc) do
    {:noreply, [{test, failures} | acc]}
  end

  # A module whose setup_all failed: its tests are invalid, reported once here.
  def handle_cast(
        {:module_finished, %ExUnit.TestModule{state: {:failed, failures}} = module},
        acc
      ) do
    {:noreply, [{module, failures} | acc]}
  end

  def handle_cast({:suite_finished, _times}, []), do: {:noreply, []}

  def handle_cast({:suite_finished, _times}, acc) do
    failed = Enum.reverse(acc)
    IO.puts("\nFailed, again in short (#{length(failed)}):")

    failed
    |> Enum.with_index(1)
    |> Enum.each(fn {failed, n} -> IO.puts(report(failed, n)) end)

    {:noreply, []}
  end

  def handle_cast(_event, acc), do: {:noreply, acc}

  defp report({%ExUnit.Test{} = test, failures}, n),
    do: ExUnit.Formatter.format_test_failure(test, failures, n, 100, &plain/2) |> head()

  defp report({%ExUnit.TestModule{} = module, failures}, n),
    do: ExUnit.Formatter.format_test_all_failure(module, failures, n, 100, &plain/2) |> head()

  defp plain(_kind, text), do: text

  defp head(text), do: text |> String.split("\n") |> Enum.take(@lines) |> Enum.join("\n")
end
