defmodule SynapseCore.ProbeTest do
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Error, Probe}

  @moduletag capture_log: true

  test "echo round trips, multiplexed on the worker's session" do
    name = start_fixture_agent!("echo_agent")
    assert {:ok, "ping"} = Probe.echo(name, "ping")
    assert {:ok, ""} = Probe.echo(name, "")

    # Many calls at once on one session: each gets its own answer.
    replies =
      1..300
      |> Task.async_stream(fn i -> {i, Probe.echo(name, "payload #{i}")} end, max_concurrency: 300)
      |> Enum.map(fn {:ok, reply} -> reply end)

    assert Enum.all?(replies, fn {i, reply} -> reply == {:ok, "payload #{i}"} end)
  end

  test "a new session after the worker is replaced" do
    name = start_fixture_agent!("echo_agent")
    os_pid = worker_os_pid(name)
    assert {:ok, "a"} = Probe.echo(name, "a")

    System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    eventually(
      fn -> match?([%{os_pid: new}] when new != os_pid, SynapseCore.Agent.workers(name)) end,
      10_000
    )

    assert {:ok, "b"} = Probe.echo(name, "b")
  end

  test "echo_stream and its errors" do
    name = start_fixture_agent!("echo_agent")
    assert ["x", "x", "x"] = name |> Probe.echo_stream("x", 3) |> Enum.to_list()
    assert 2 = name |> Probe.echo_stream("x", 10_000) |> Enum.take(2) |> length()
    assert {:error, %Error{kind: :unknown_agent}} = Probe.echo(:no_such_agent, "x")
  end
end
