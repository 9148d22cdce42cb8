defmodule SynapseCore.ProbeTest do
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{Error, Probe}

  @moduletag capture_log: true

  test "echo round trips, many at once on the worker's connection" do
    name = start_fixture_agent!("echo_agent")
    assert {:ok, "ping"} = Probe.echo(name, "ping")
    assert {:ok, ""} = Probe.echo(name, "")

    # Many calls at once on one connection: each gets its own answer.
    replies =
      1..300
      |> Task.async_stream(fn i -> {i, Probe.echo(name, "payload #{i}")} end, max_concurrency: 300)
      |> Enum.map(fn {:ok, reply} -> reply end)

    assert Enum.all?(replies, fn {i, reply} -> reply == {:ok, "payload #{i}"} end)
  end

  test "a new connection after the worker is replaced" do
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

  test "every call takes the transport asked for", %{transport: transport} do
    name = start_fixture_agent!("echo_agent")
    [%{address: "unix:" <> socket, lane: lane}] = SynapseCore.Agent.workers(name)

    case transport do
      :lane ->
        assert "unix:" <> lane_socket = lane
        assert Path.dirname(lane_socket) == Path.dirname(socket)
        # Nothing was sent over gRPC: without its socket, calls still work.
        File.rm!(socket)

      :grpc ->
        assert lane == nil
    end

    assert {:ok, "x"} = Probe.echo(name, "x")
    assert {:ok, %SynapseCore.Result{}} = SynapseCore.Agent.run_sync(name, "hi")
  end

  test "echo_stream and its errors" do
    name = start_fixture_agent!("echo_agent")
    assert ["x", "x", "x"] = name |> Probe.echo_stream("x", 3) |> Enum.to_list()
    assert 2 = name |> Probe.echo_stream("x", 10_000) |> Enum.take(2) |> length()
    assert {:error, %Error{kind: :unknown_agent}} = Probe.echo(:no_such_agent, "x")
  end
end
