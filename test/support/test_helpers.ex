defmodule SynapseCore.TestHelpers do
  @moduledoc false
  # Shared by the ExUnit suites: where the Python fixtures are, starting
  # agents on them, and watching OS processes.

  import ExUnit.Assertions

  @fixtures Path.expand("python", __DIR__)

  @doc "The directory holding the `synapse_fixtures` Python package."
  def fixtures_path, do: @fixtures

  @doc "Agent options for a fixture agent of `synapse_fixtures.agents`."
  def fixture_agent(attr, extra \\ []) do
    Keyword.merge(
      [
        name: unique_name(),
        agent: "synapse_fixtures.agents:#{attr}",
        python_path: [@fixtures],
        transport: transport()
      ],
      extra
    )
  end

  @doc """
  The transport of the workers this test process starts: the test's
  (`SynapseCore.Transports`), else the default, the lane.
  """
  def transport, do: Process.get({__MODULE__, :transport}, :lane)

  @doc false
  def put_transport(transport) when transport in [:lane, :grpc] do
    Process.put({__MODULE__, :transport}, transport)
    :ok
  end

  @doc """
  The events of run `ref` in the mailbox now. (Not Process.info/2: messages
  the NIF sent from its own threads may still be in transit to the mailbox,
  and only a receive is sure to see them.)
  """
  def take_events(ref, taken \\ []) do
    receive do
      {:synapse_event, ^ref, event} -> take_events(ref, [event | taken])
    after
      0 -> Enum.reverse(taken)
    end
  end

  def unique_name, do: :"agent_#{System.unique_integer([:positive])}"

  @doc """
  A throwaway self-signed certificate as PEM, for `tls: [ca: {:pem, pem}]`
  where no connection is made (no worker listens): the option takes only
  certificates that parse.
  """
  def test_ca_pem do
    %{cert: der} = :public_key.pkix_test_root_cert(~c"Synapse test CA", [])
    :public_key.pem_encode([{:Certificate, der, :not_encrypted}])
  end

  @doc """
  A path for a temporary directory, unique on this machine: other test runs
  (other checkouts) may be running at the same time, and
  `System.unique_integer/1` is unique within one VM only.
  """
  def tmp_dir(prefix) do
    Path.join(
      System.tmp_dir!(),
      "#{prefix}-#{System.pid()}-#{System.unique_integer([:positive])}"
    )
  end

  @doc "Starts an agent under the test's supervisor; returns its name."
  def start_fixture_agent!(attr, extra \\ []) do
    opts = fixture_agent(attr, extra)
    ExUnit.Callbacks.start_supervised!({SynapseCore.Agent, opts})
    opts[:name]
  end

  @doc "Starts an agent of `synapse_fixtures.faults` (misbehaving on purpose); returns its name."
  def start_fault_agent!(attr, extra \\ []) do
    start_fixture_agent!(attr, Keyword.put_new(extra, :agent, "synapse_fixtures.faults:#{attr}"))
  end

  @doc "The OS pid of the agent's only worker."
  def worker_os_pid(name) do
    [%{os_pid: os_pid}] = SynapseCore.Agent.workers(name)
    os_pid
  end

  @doc "True while the OS process exists and is not a zombie."
  def os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # The state follows the parenthesised command name.
        [_, after_name] = String.split(stat, ") ", parts: 2)
        not String.starts_with?(after_name, ["Z", "X"])

      {:error, _} ->
        false
    end
  end

  @doc "Polls `fun` until it returns a truthy value or `timeout` ms pass."
  def eventually(fun, timeout \\ 5_000, interval \\ 25) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, interval)
  end

  defp poll(fun, deadline, interval) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          flunk("condition not met in time")
        else
          Process.sleep(interval)
          poll(fun, deadline, interval)
        end
    end
  end

  @doc """
  Stops an agent or bridge started with `start_link` and unlinked, from any
  process (an `on_exit` callback runs in another one). Its supervisor traps
  exits and ignores an exit signal from a process that is not its parent, so
  `Process.exit(pid, :shutdown)` from there would leave it running.
  """
  def stop_unlinked(pid) do
    GenServer.stop(pid, :shutdown, :infinity)
  catch
    :exit, _already_gone -> :ok
  end

  @doc """
  Makes sure epmd runs and answers, for tests that start distribution.

  The epmd of this VM's Erlang is shared by every node on the machine (a
  release's BEAM would otherwise start one from its own directory).
  `epmd -daemon` returns before the daemon listens, so a `Node.start/2`
  right after it can fail with `:nodistribution`: wait until it answers.
  """
  def start_epmd! do
    erts = Path.join(:code.root_dir(), "erts-#{:erlang.system_info(:version)}")
    epmd = Path.join(erts, "bin/epmd")
    epmd = if File.exists?(epmd), do: epmd, else: System.find_executable("epmd")
    {_, 0} = System.cmd(epmd, ["-daemon"])
    eventually(fn -> match?({:ok, _}, :net_adm.names()) end, 10_000)
    :ok
  end

  @doc """
  Starts the fake OpenAI-compatible server (synapse_fixtures.openai_server)
  for the calling test; returns its base URL. It exits when the test process
  does: its stdin is the port, and it stops at EOF. `args` are the server's
  options (`["--script", path, "--record", path]`, ...).
  """
  def start_openai_server!(args \\ []) do
    number = start_listening_fixture!("openai_server", ["--port", "0" | args])
    "http://127.0.0.1:#{number}/v1"
  end

  @doc """
  Starts synapse_fixtures.mcp_server (an MCP server, streamable HTTP, tools
  `add` and `shout`) for the test; returns its URL.
  """
  def start_mcp_server! do
    "http://127.0.0.1:#{start_listening_fixture!("mcp_server", [])}/mcp"
  end

  # Starts `python -m synapse_fixtures.<module>`, which prints "LISTENING
  # <port>" once it serves and exits when its stdin (the port) closes.
  defp start_listening_fixture!(module, args) do
    {:ok, python} = SynapseCore.Python.interpreter()

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:line, 1024},
        args: ["-m", "synapse_fixtures.#{module}" | args],
        env: [{~c"PYTHONPATH", String.to_charlist(@fixtures)}]
      ])

    receive do
      {^port, {:data, {:eol, "LISTENING " <> number}}} ->
        number

      {^port, {:exit_status, status}} ->
        flunk("synapse_fixtures.#{module} exited with #{status}")
    after
      30_000 -> flunk("synapse_fixtures.#{module} did not start")
    end
  end

  @doc "The environment a worker needs to use the fake OpenAI server at `base_url`."
  def openai_env(base_url) do
    [{"OPENAI_BASE_URL", base_url}, {"OPENAI_API_KEY", "test-key"}, {"NO_PROXY", "127.0.0.1"}]
  end

  @doc "Waits until `name` has `count` ready workers; returns them."
  def await_workers(name, count \\ 1, timeout \\ 30_000) do
    eventually(
      fn ->
        workers = SynapseCore.Agent.workers(name)
        length(workers) == count && workers
      end,
      timeout
    )
  end

  @doc """
  The outputs of `runs` runs of the agent `name` made one after the other by
  each of `callers` processes (one after another), with `prompt`: a list
  per caller. With an agent answering its worker's OS pid, the workers each
  caller's runs went to.
  """
  def sequential_outputs(name, prompt, callers \\ 3, runs \\ 8) do
    for _caller <- 1..callers do
      Task.async(fn ->
        for _ <- 1..runs do
          {:ok, %SynapseCore.Result{output: output}} = SynapseCore.Agent.run_sync(name, prompt)
          output
        end
      end)
      |> Task.await(60_000)
    end
  end
end
