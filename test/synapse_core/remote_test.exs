defmodule SynapseCore.RemoteTest do
  # A worker started by hand (as another machine or system would) on TCP
  # with TLS and a token, attached to an agent by address.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Shepherd}

  @moduletag capture_log: true

  @token "s3cret-token-#{System.unique_integer([:positive])}"

  setup do
    dir = Path.join(System.tmp_dir!(), "synapse-tls-#{System.unique_integer([:positive])}")
    {_, 0} = System.cmd(Path.expand("../support/make_test_cert.sh", __DIR__), [dir])
    on_exit(fn -> File.rm_rf!(dir) end)
    %{cert: Path.join(dir, "cert.pem"), key: Path.join(dir, "key.pem")}
  end

  # Starts `python -m synapse_python.worker` on TCP, as another system
  # would; returns {port, address}. It runs under synapse-shepherd only so
  # that it cannot outlive the test.
  defp start_remote_worker(tls, agent, listen_port \\ 0) do
    {:ok, python} = SynapseCore.Python.interpreter()
    shepherd = Path.join(SynapseCore.Python.priv_dir(), "bin/synapse-shepherd")

    config = %{
      argv: [
        python,
        "-m",
        "synapse_python.worker",
        "--listen",
        "tcp://127.0.0.1:#{listen_port}",
        "--tls-cert",
        tls.cert,
        "--tls-key",
        tls.key,
        "--agent",
        "agent=synapse_fixtures.agents:#{agent}"
      ],
      env: [
        {"PATH", System.get_env("PATH")},
        {"PYTHONPATH", "#{SynapseCore.Python.package_dir()}:#{fixtures_path()}"},
        {"SYNAPSE_WORKER_TOKEN", @token}
      ],
      cwd: nil,
      grace_ms: 1_000,
      cleanup: nil
    }

    port = Port.open({:spawn_executable, shepherd}, [:binary, {:packet, 4}, :exit_status])
    Port.command(port, Shepherd.encode_config(config))
    {port, await_ready(port)}
  end

  defp await_ready(port) do
    receive do
      {^port, {:data, data}} ->
        case Shepherd.decode(data) do
          {:ready, address} -> address
          {:exited, status} -> flunk("the remote worker exited: #{inspect(status)}")
          _output -> await_ready(port)
        end
    after
      30_000 -> flunk("the remote worker did not start")
    end
  end

  defp kill(port), do: Port.command(port, Shepherd.encode_signal(9))

  defp remote_agent(address, tls, extra) do
    name = unique_name()

    opts =
      Keyword.merge(
        [
          name: name,
          agent: "synapse_fixtures.agents:echo_agent",
          workers: 0,
          remote: [address],
          tls: [ca: tls.cert, server_name: "localhost"],
          token: @token,
          health_interval: 200,
          health_timeout: 500,
          max_backoff: 500
        ],
        extra
      )

    start_supervised!({Agent, opts}, id: name)
    name
  end

  test "a remote worker attached by address serves the agent", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")
    name = remote_agent(address, tls, [])

    assert [%{address: ^address, location: {:remote, ^address}}] = await_workers(name)
    assert {:ok, %Result{output: "success (no tool calls)"}} = Agent.run_sync(name, "hi")

    events = name |> Agent.run_stream("hi") |> Enum.to_list()
    assert {:result, %Result{}} = List.last(events)
  end

  test "a wrong token is refused: the worker never serves the agent", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")

    log =
      capture_log(fn ->
        name = remote_agent(address, tls, token: "not-the-token")
        Process.sleep(1_500)
        assert Agent.workers(name) == []
        assert {:error, %Error{kind: :unavailable}} = Agent.run_sync(name, "hi")
      end)

    assert log =~ "unauthenticated" or log =~ "missing or invalid bearer token"
    refute log =~ @token
  end

  test "the token never shows in inspected state, crash reports or logs", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")

    log =
      capture_log(fn ->
        name = remote_agent(address, tls, [])
        [%{pid: process}] = await_workers(name)
        refute inspect(:sys.get_state(process), limit: :infinity) =~ @token
        {:ok, _} = Agent.run_sync(name, "hi")
      end)

    refute log =~ @token
  end

  test "local and remote workers in one pool", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")
    name = remote_agent(address, tls, workers: 1, python_path: [fixtures_path()])

    workers = await_workers(name, 2)
    assert workers |> Enum.map(& &1.location) |> Enum.sort() == [:local, {:remote, address}]
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "a remote worker that goes away is health-checked out and reconnected", tls do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, listen_port} = :inet.port(socket)
    :gen_tcp.close(socket)

    {port, address} = start_remote_worker(tls, "echo_agent", listen_port)
    name = remote_agent(address, tls, [])
    await_workers(name)

    kill(port)
    eventually(fn -> Agent.workers(name) == [] end, 10_000)
    assert {:error, %Error{kind: :unavailable}} = Agent.run_sync(name, "hi")

    {_port, ^address} = start_remote_worker(tls, "echo_agent", listen_port)
    await_workers(name, 1, 20_000)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "remote workers require TLS and a token" do
    assert_raise ArgumentError, ~r/:tls/, fn ->
      SynapseCore.Agent.child_spec(
        name: :x,
        model: "test",
        workers: 0,
        remote: ["tcp://127.0.0.1:1"],
        token: "t"
      )
    end

    assert_raise ArgumentError, ~r/:token/, fn ->
      SynapseCore.Agent.child_spec(
        name: :x,
        model: "test",
        workers: 0,
        remote: ["tcp://127.0.0.1:1"],
        tls: [ca: {:pem, "x"}]
      )
    end
  end
end
