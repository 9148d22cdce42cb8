defmodule SynapseCore.RunOwnershipTest do
  # A run belongs to processes, not to the `Run` struct: it ends with its
  # result, cancel/1, or its owner (or receiver) exiting, never because
  # the struct was dropped and garbage collected. The documented message
  # tag (`run.ref`) is all a receiver needs to keep.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  alias SynapseCore.{Agent, Result, Run}

  # Collects garbage in every process of the VM, a few times while the run
  # is in flight: what a loaded VM does to a dropped struct.
  defp collect_everything(rounds) do
    for _ <- 1..rounds do
      for pid <- Process.list(), do: :erlang.garbage_collect(pid)
      Process.sleep(50)
    end
  end

  # Starts a run and keeps only its tag: the struct is unreachable once
  # this returns.
  defp ref_only(start) do
    {:ok, %Run{ref: ref}} = start.()
    ref
  end

  defp assert_cancelled_in_python(name, prompt) do
    eventually(fn ->
      {:ok, %Result{output: json}} = Agent.run_sync(name, "cancelled?")
      String.contains?(json, ~s("#{prompt}"))
    end)
  end

  test "a run/3 caller that keeps only the ref gets the result" do
    name = start_fixture_agent!("slow_agent")
    ref = ref_only(fn -> Agent.run(name, "0.6") end)
    collect_everything(6)
    assert_receive {:synapse_reply, ^ref, {:ok, %Result{output: "done"}}}, 10_000
  end

  test "a run with Elixir tools whose caller keeps only the ref gets the result" do
    name = start_fixture_agent!("calling_agent")

    double =
      SynapseCore.Tool.new(
        name: "double",
        parameters: [a: :integer],
        function: fn %{a: a} ->
          collect_everything(4)
          2 * a
        end
      )

    prompt = ~s({"calls": [{"name": "double", "args": {"a": 21}}], "retry_calls": false})
    ref = ref_only(fn -> Agent.run(name, prompt, tools: [double]) end)
    collect_everything(2)
    assert_receive {:synapse_reply, ^ref, {:ok, %Result{}}}, 10_000
  end

  test "a stream_to receiver that keeps only the ref, with window: :infinity, gets every event" do
    name = start_fixture_agent!("slow_stream_agent")
    test = self()

    receiver =
      spawn_link(fn ->
        ref = receive(do: ({:ref, ref} -> ref))
        send(test, {:received, collect(ref, [])})
      end)

    ref =
      ref_only(fn ->
        Agent.run_stream(name, "6 0.1", stream_to: receiver, window: :infinity)
      end)

    send(receiver, {:ref, ref})
    collect_everything(6)
    assert_receive {:received, {texts, %Result{output: output}}}, 10_000
    assert length(texts) == 6
    assert Enum.join(texts) == output
  end

  test "a run whose struct was dropped is still cancelled when its owner exits" do
    name = start_fixture_agent!("slow_agent")
    test = self()

    owner =
      spawn(fn ->
        ref_only(fn -> Agent.run(name, "30.7") end)
        send(test, :started)
        Process.sleep(:infinity)
      end)

    assert_receive :started, 5_000
    collect_everything(2)
    # Long enough for the run to reach Python before its owner exits.
    Process.sleep(200)
    Process.exit(owner, :kill)
    assert_cancelled_in_python(name, "30.7")
  end

  test "a stream whose struct was dropped is still cancelled when its receiver exits" do
    name = start_fixture_agent!("slow_stream_agent")
    test = self()

    # Says when the first event came: the run is streaming in Python, so
    # killing the receiver then cancels a run that began (killed before the
    # run reached Python, on a loaded machine, nothing would be recorded).
    receiver =
      spawn(fn ->
        receive do
          {:synapse_event, _ref, _event} -> send(test, :streaming)
        end

        Process.sleep(:infinity)
      end)

    ref_only(fn ->
      Agent.run_stream(name, "300 0.1", stream_to: receiver, window: :infinity)
    end)

    collect_everything(2)
    assert_receive :streaming, 10_000
    Process.exit(receiver, :kill)
    assert_cancelled_in_python(name, "300 0.1")
  end

  defp collect(ref, texts) do
    receive do
      {:synapse_event, ^ref, {:text_delta, text}} -> collect(ref, [text | texts])
      {:synapse_event, ^ref, {:result, result}} -> {Enum.reverse(texts), result}
      {:synapse_event, ^ref, {:error, error}} -> {Enum.reverse(texts), error}
    after
      10_000 -> {Enum.reverse(texts), :stalled}
    end
  end
end
