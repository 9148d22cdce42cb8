defmodule SynapseCore.RemoteTest do
  # A worker started by hand (as another machine or system would) on TCP
  # with TLS and a token, attached to an agent by address.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Shepherd}
  alias SynapseCore.Agent.Options, as: AgentOptions

  @moduletag capture_log: true

  @token "s3cret-token-#{System.unique_integer([:positive])}"
  @bridge_module "synapse_fixtures.bridge_types"

  setup do
    dir = Path.join(System.tmp_dir!(), "synapse-tls-#{System.unique_integer([:positive])}")
    {_, 0} = System.cmd(Path.expand("../support/make_test_cert.sh", __DIR__), [dir])
    on_exit(fn -> File.rm_rf!(dir) end)
    %{cert: Path.join(dir, "cert.pem"), key: Path.join(dir, "key.pem")}
  end

  # Starts `python -m synapse_python.worker` on TCP, as another system
  # would; returns {shepherd, address}. It runs under synapse-shepherd only
  # so that it cannot outlive the test.
  # `source`: the fixture agent it loads, or `{:bridge, module, dir}` for
  # the generated bridge of `module` (its files in `dir`).
  defp start_remote_worker(tls, source, listen_port \\ 0, token \\ @token) do
    {:ok, python} = SynapseCore.Python.interpreter()

    {serve, python_path} =
      case source do
        {:bridge, module, dir} -> {["--bridge", module], [dir]}
        agent -> {["--agent", "agent=synapse_fixtures.agents:#{agent}"], []}
      end

    python_path = [SynapseCore.Python.package_dir(), fixtures_path() | python_path]

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
        tls.key
        | serve
      ],
      env: [
        {"PATH", System.get_env("PATH")},
        {"PYTHONPATH", Enum.join(python_path, ":")},
        {"SYNAPSE_WORKER_TOKEN", token},
        Shepherd.log_fd_env()
      ],
      cwd: nil,
      grace_ms: 1_000,
      cleanup: nil
    }

    {:ok, shepherd} = Shepherd.start_link(config)
    {shepherd, await_ready(shepherd)}
  end

  defp await_ready(shepherd) do
    receive do
      {:shepherd, ^shepherd, {:ready, address}} ->
        address

      {:shepherd, ^shepherd, {:exited, exit}} ->
        flunk("the remote worker exited: #{exit.message}")
    after
      30_000 -> flunk("the remote worker did not start")
    end
  end

  defp kill(shepherd), do: Shepherd.kill(shepherd)

  # A TCP relay on a port of its own to the worker at `target`; returns
  # {relay, its address}. `switch_tcp_relay/2` points it at another worker
  # and drops the connections it carries.
  defp start_tcp_relay("tcp://127.0.0.1:" <> port) do
    {:ok, listener} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false])
    {:ok, relay_port} = :inet.port(listener)
    relay = spawn_link(fn -> relay_loop(listener, String.to_integer(port), []) end)
    :ok = :gen_tcp.controlling_process(listener, relay)
    send(relay, :accept)
    {relay, "tcp://127.0.0.1:#{relay_port}"}
  end

  defp switch_tcp_relay(relay, "tcp://127.0.0.1:" <> port) do
    send(relay, {:switch, String.to_integer(port), self()})
    assert_receive :switched
  end

  defp relay_loop(listener, port, pipes) do
    receive do
      :accept ->
        relay = self()

        spawn_link(fn ->
          {:ok, client} = :gen_tcp.accept(listener)
          :ok = :gen_tcp.controlling_process(client, relay)
          send(relay, {:accepted, client})
        end)

        relay_loop(listener, port, pipes)

      {:accepted, client} ->
        {:ok, upstream} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: true])
        :ok = :inet.setopts(client, active: true)
        send(self(), :accept)
        relay_loop(listener, port, [{client, upstream} | pipes])

      {:tcp, socket, bytes} ->
        for {client, upstream} <- pipes do
          cond do
            socket == client -> :gen_tcp.send(upstream, bytes)
            socket == upstream -> :gen_tcp.send(client, bytes)
            true -> :ok
          end
        end

        relay_loop(listener, port, pipes)

      {:tcp_closed, socket} ->
        {closed, open} =
          Enum.split_with(pipes, fn {client, upstream} -> socket in [client, upstream] end)

        Enum.each(closed, fn {client, upstream} ->
          :gen_tcp.close(client)
          :gen_tcp.close(upstream)
        end)

        relay_loop(listener, port, open)

      {:switch, port, from} ->
        Enum.each(pipes, fn {client, upstream} ->
          :gen_tcp.close(client)
          :gen_tcp.close(upstream)
        end)

        send(from, :switched)
        relay_loop(listener, port, [])
    end
  end

  # A port nothing listens on (for a while): where a worker will come later.
  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  defp remote_agent(address, tls, extra) do
    opts = remote_options(address, tls, extra)
    start_supervised!({Agent, opts}, id: opts[:name])
    opts[:name]
  end

  defp remote_options(address, tls, extra) do
    Keyword.merge(
      [
        name: unique_name(),
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
  end

  test "a remote worker attached by address serves the agent", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")
    name = remote_agent(address, tls, [])

    assert [%{address: ^address, location: {:remote, ^address}}] = await_workers(name)
    assert {:ok, %Result{output: "success (no tool calls)"}} = Agent.run_sync(name, "hi")

    events = name |> Agent.run_stream("hi") |> Enum.to_list()
    assert {:result, %Result{}} = List.last(events)
  end

  describe "a remote worker that refuses the agent fails its start with its own kind" do
    test "a wrong token", tls do
      {_shepherd, address} = start_remote_worker(tls, "echo_agent")

      log =
        capture_log(fn ->
          assert {:error, %Error{kind: :unauthenticated} = error} =
                   SynapseCore.start_agent(remote_options(address, tls, token: "not-the-token"))

          refute inspect(error, limit: :infinity) =~ @token
        end)

      refute log =~ @token
    end

    test "a certificate not valid for the server name", tls do
      {_shepherd, address} = start_remote_worker(tls, "echo_agent")
      tls_options = [ca: tls.cert, server_name: "elsewhere.example"]

      assert {:error, %Error{kind: :tls_error, message: message}} =
               SynapseCore.start_agent(remote_options(address, tls, tls: tls_options))

      assert message =~ "certificate"
    end

    test "a certificate from an unknown authority", tls do
      {_shepherd, address} = start_remote_worker(tls, "echo_agent")
      other = Path.join(Path.dirname(tls.cert), "other")
      {_, 0} = System.cmd(Path.expand("../support/make_test_cert.sh", __DIR__), [other])
      tls_options = [ca: Path.join(other, "cert.pem"), server_name: "localhost"]

      assert {:error, %Error{kind: :tls_error}} =
               SynapseCore.start_agent(remote_options(address, tls, tls: tls_options))
    end

    test "a module the remote worker cannot import", tls do
      {_shepherd, address} = start_remote_worker(tls, "echo_agent")

      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(
                 remote_options(address, tls, agent: "synapse_fixtures.nope:agent")
               )

      assert message =~ "No module named 'synapse_fixtures.nope'"
    end
  end

  test "a remote worker not up yet is waited for in the background", tls do
    listen_port = free_port()
    address = "tcp://127.0.0.1:#{listen_port}"

    {:ok, _} = SynapseCore.start_agent(remote_options(address, tls, name: name = unique_name()))
    on_exit(fn -> SynapseCore.stop_agent(name) end)
    assert {:error, %Error{kind: :unavailable}} = Agent.run_sync(name, "hi")

    {_shepherd, ^address} = start_remote_worker(tls, "echo_agent", listen_port)
    await_workers(name, 1, 20_000)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
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

  # The worker strips the whitespace around the token it reads from
  # SYNAPSE_WORKER_TOKEN; the same variable, with the newline a secret file
  # often ends with, was refused here as an invalid :token.
  test "a token read from the environment has its surrounding whitespace stripped", tls do
    variable = "SYNAPSE_TEST_TOKEN_#{System.unique_integer([:positive])}"
    System.put_env(variable, @token <> "\n")
    on_exit(fn -> System.delete_env(variable) end)

    {_shepherd, address} = start_remote_worker(tls, "echo_agent", 0, @token <> "\n")
    name = remote_agent(address, tls, token: {:system, variable})

    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "local and remote workers in one pool", tls do
    {_port, address} = start_remote_worker(tls, "echo_agent")
    name = remote_agent(address, tls, workers: 1, python_path: [fixtures_path()])

    workers = await_workers(name, 2)
    assert workers |> Enum.map(& &1.location) |> Enum.sort() == [:local, {:remote, address}]
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "a remote worker that goes away is health-checked out and reconnected; one that comes back refusing the token makes calls answer :unauthenticated",
       tls do
    listen_port = free_port()

    {shepherd, address} = start_remote_worker(tls, "echo_agent", listen_port)
    name = remote_agent(address, tls, [])
    await_workers(name)

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        kill(shepherd)
        eventually(fn -> Agent.workers(name) == [] end, 10_000)
      end)

    # A remote worker is named by its address (it has no OS pid here), and
    # nothing here kills it.
    assert log =~ "Python worker at #{address} failed 2 health checks"
    assert log =~ "connecting to it again"
    assert {:error, %Error{kind: :unavailable}} = Agent.run_sync(name, "hi")

    {shepherd, ^address} = start_remote_worker(tls, "echo_agent", listen_port)
    await_workers(name, 1, 20_000)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")

    kill(shepherd)
    eventually(fn -> Agent.workers(name) == [] end, 10_000)
    {_shepherd, ^address} = start_remote_worker(tls, "echo_agent", listen_port, "another-token")

    eventually(
      fn -> match?({:error, %Error{kind: :unauthenticated}}, Agent.run_sync(name, "hi")) end,
      20_000
    )
  end

  describe "a remote bridge worker" do
    setup do
      dir = tmp_dir("synapse-remote-bridge")
      on_exit(fn -> File.rm_rf!(dir) end)

      {:ok, _files} =
        Mix.Tasks.Synapse.Gen.Bridge.generate(@bridge_module,
          python_path: fixtures_path(),
          lib: Path.join(dir, "lib"),
          out: Path.join(dir, "priv")
        )

      %{bridge_dir: Path.join(dir, "priv")}
    end

    defp start_bridge(address, tls, extra) do
      opts =
        address
        |> remote_options(tls, Keyword.put(extra, :module, @bridge_module))
        |> Keyword.delete(:agent)

      with {:ok, pid} <- SynapseCore.Bridge.start_link(opts) do
        Process.unlink(pid)
        on_exit(fn -> stop_unlinked(pid) end)
        {:ok, opts[:name]}
      end
    end

    test "that serves the bridge is attached", tls do
      {_shepherd, address} = start_remote_worker(tls, {:bridge, @bridge_module, tls.bridge_dir})

      assert {:ok, name} = start_bridge(address, tls, [])
      assert [%{location: {:remote, ^address}}] = await_workers(name)
    end

    # Its first health check passed: the bridge started, and every call
    # answered :internal "Method not found!".
    test "that does not serve the bridge fails the bridge's start", tls do
      {_shepherd, address} = start_remote_worker(tls, "echo_agent")

      assert {:error, %Error{kind: :startup_failed, message: message}} =
               start_bridge(address, tls, [])

      assert message =~ @bridge_module
    end
  end

  # A misconfiguration that would otherwise be retried forever as
  # `:unavailable` (no port is port 443, a port beyond 65535 cannot be
  # connected to) fails at validation.
  test "a remote address must be tcp://host:port with a port from 1 to 65535", tls do
    for address <- [
          "tcp://127.0.0.1",
          "tcp://127.0.0.1:70000",
          "tcp://127.0.0.1:0",
          "tcp://gpu-box:port",
          "tcp://127.0.0.1:7100/agents",
          "tcp://user:pass@gpu-box:7100",
          "tcp://:7100"
        ] do
      assert_raise ArgumentError, ~r/invalid :remote option/, fn ->
        SynapseCore.Agent.child_spec(remote_options(address, tls, []))
      end
    end

    for address <- ["tcp://gpu-box:7100", "tcp://10.0.0.2:1", "tcp://[::1]:65535"] do
      assert %{start: _} = SynapseCore.Agent.child_spec(remote_options(address, tls, []))
    end
  end

  # Accepted before: one process attached as two workers of the pool, each
  # counting only its own calls in flight, got twice its share of calls.
  test "an address given twice is refused, however it is spelled", tls do
    for {remote, named} <- [
          {["tcp://gpu-box:7100", "tcp://other:7100", "tcp://gpu-box:7100"],
           "tcp://gpu-box:7100"},
          {["tcp://gpu-box:7100", "tcp://GPU-Box.:07100"], "tcp://GPU-Box.:07100"},
          {["tcp://[::1]:7100", "tcp://[0:0::1]:7100"], "tcp://[0:0::1]:7100"},
          {["tcp://10.0.0.2:7100", "tcp://10.0.0.2:7100"], "tcp://10.0.0.2:7100"}
        ] do
      error =
        assert_raise ArgumentError, ~r/invalid :remote option: .* is given twice/, fn ->
          SynapseCore.Agent.child_spec(remote_options("unused", tls, remote: remote))
        end

      assert Exception.message(error) =~ named
    end

    remote = [
      "tcp://gpu-box:7100",
      "tcp://gpu-box:7101",
      "tcp://10.0.0.2:7100",
      "tcp://[::2]:7100"
    ]

    assert %{start: _} =
             SynapseCore.Agent.child_spec(remote_options("unused", tls, remote: remote))
  end

  # A remote worker restarted at the same address quickly enough that no
  # two health checks in a row failed: the worker's own health passed, and
  # every call answered :not_found "no agent loaded" for good. Here a TCP
  # relay in front of the workers switches from one to another, which the
  # channel's next connection reaches as it would a restarted process.
  test "a worker that comes back at the same address without the agent has it loaded again",
       tls do
    {_first, first} = start_remote_worker(tls, "echo_agent")
    {_second, second} = start_remote_worker(tls, "echo_agent")
    {relay, address} = start_tcp_relay(first)
    name = remote_agent(address, tls, [])
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")

    switch_tcp_relay(relay, second)

    eventually(fn -> match?({:ok, %Result{}}, Agent.run_sync(name, "hi")) end, 10_000)
  end

  # The same without health checks: every call answered :not_found for
  # good. The first run that finds the agent missing has it loaded again.
  test "without health checks, a run that finds the agent missing has it loaded again", tls do
    {_first, first} = start_remote_worker(tls, "echo_agent")
    {_second, second} = start_remote_worker(tls, "echo_agent")
    {relay, address} = start_tcp_relay(first)
    name = remote_agent(address, tls, health_interval: :infinity)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")

    switch_tcp_relay(relay, second)

    # Until the channel reaches the second worker, runs fail as the first
    # one's connection ends; the first that reaches it finds no agent.
    eventually(
      fn -> match?({:error, %Error{kind: :not_found}}, Agent.run_sync(name, "hi")) end,
      10_000
    )

    eventually(fn -> match?({:ok, %Result{}}, Agent.run_sync(name, "hi")) end, 10_000)
  end

  # Accepted before: the first connection to a worker that is up failed
  # with :tls_error UnknownIssuer, and one to a worker not up yet was
  # retried. A private key given by mistake is not shown in the error.
  test "the TLS ca must hold a PEM certificate", tls do
    key = File.read!(tls.key)
    cert = File.read!(tls.cert)
    both = Path.join(Path.dirname(tls.cert), "both.pem")
    File.write!(both, cert <> key)

    # A CERTIFICATE block that is not one (accepted before: rustls dropped
    # it and trusted nothing, and every connection failed UnknownIssuer),
    # one that does not end or whose base64 is broken (which failed the
    # start as "bad TLS settings"), and a private key next to a certificate
    # (which would have sat in the options' term).
    not_x509 =
      "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"

    for ca <- [
          tls.key,
          {:pem, key},
          {:pem, "not a certificate"},
          {:pem, not_x509},
          {:pem, cert <> not_x509},
          {:pem, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"},
          {:pem, "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"},
          {:pem, cert <> key},
          both
        ] do
      error =
        assert_raise ArgumentError, ~r/invalid :ca option/, fn ->
          tls_options = [ca: ca, server_name: "localhost"]

          SynapseCore.Agent.child_spec(
            remote_options("tcp://gpu-box:7100", tls, tls: tls_options)
          )
        end

      refute Exception.message(error) =~ "PRIVATE KEY"
      refute Exception.message(error) =~ String.slice(key, 40, 40)
    end
  end

  # What the CA option keeps is its certificates, as the NIF reads them.
  test "a CA file's certificates are kept, whatever else is around them", tls do
    cert = File.read!(tls.cert)
    text = "a comment\n" <> cert <> "-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"
    tls_options = [ca: {:pem, text}, server_name: "localhost"]
    options = AgentOptions.agent!(remote_options("tcp://127.0.0.1:1", tls, tls: tls_options))

    assert :public_key.pem_decode(options.tls[:ca_pem]) == :public_key.pem_decode(cert)
  end

  # Accepted before, and failed at the first connection with only "bad TLS
  # settings: transport error".
  test "the TLS server name must be a DNS name or an IP address", tls do
    for server_name <- ["bad name", "-gpu-box", "gpu..box", "gpu-box:7100", "https://gpu-box"] do
      assert_raise ArgumentError, ~r/invalid :server_name option/, fn ->
        tls_options = [ca: tls.cert, server_name: server_name]
        SynapseCore.Agent.child_spec(remote_options("tcp://gpu-box:7100", tls, tls: tls_options))
      end
    end

    for server_name <- ["gpu-box", "GPU-box.example.com.", "10.0.0.2", "::1", "a_b.internal"] do
      tls_options = [ca: tls.cert, server_name: server_name]

      assert %{start: _} =
               SynapseCore.Agent.child_spec(
                 remote_options("tcp://gpu-box:7100", tls, tls: tls_options)
               )
    end
  end

  test "remote workers require TLS and a token", tls do
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
        tls: [ca: tls.cert]
      )
    end
  end
end
