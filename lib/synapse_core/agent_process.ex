defmodule SynapseCore.AgentProcess do
  @moduledoc """
  Owns one Python worker of an agent: its OS process (through the
  `synapse-shepherd` port manager), its gRPC channel and its logs.

  It is not in the path of any call. Once the worker is ready and has loaded
  the agent, the process registers the worker's channel in
  `SynapseCore.WorkerRegistry` under the agent's name; callers look it up
  there and talk to the worker directly through the NIF.

  When the worker exits, every call in flight on it fails at once with
  `:worker_exited`, and this process stops with
  `{:shutdown, {:worker_exited, status}}` so that its supervisor starts a
  new worker. When this process stops, the worker gets SIGTERM and, after
  the agent's `:shutdown_timeout`, SIGKILL; if the whole BEAM dies, the
  shepherd sees its stdin close and does the same.

  Started by `SynapseCore.Agent`; not meant to be started directly.
  """

  use GenServer

  require Logger

  alias SynapseCore.{Agent.Options, Channel, Error, Native, Python, Shepherd}

  @agent_id "agent"
  @stderr_tail 20

  @doc false
  @spec child_spec({Options.t(), non_neg_integer()}) :: Supervisor.child_spec()
  def child_spec({%Options{} = options, index}) do
    %{
      id: {__MODULE__, index},
      start: {__MODULE__, :start_link, [{options, index}]},
      # Room for the worker's own graceful stop, then its SIGKILL.
      shutdown: options.shutdown_timeout + 2_000
    }
  end

  @doc false
  @spec start_link({Options.t(), non_neg_integer()}) :: GenServer.on_start()
  def start_link({%Options{}, _index} = arg), do: GenServer.start_link(__MODULE__, arg)

  @doc """
  The worker's OS pid and address, for observability.
  """
  @spec info(pid()) :: %{os_pid: pos_integer(), address: String.t(), agent: term()}
  def info(pid), do: GenServer.call(pid, :info)

  ## Start-up

  @impl true
  def init({options, index}) do
    Process.flag(:trap_exit, true)
    Logger.metadata(agent: inspect(options.name), worker: index)
    deadline = System.monotonic_time(:millisecond) + options.startup_timeout

    state = %{
      options: options,
      port: nil,
      os_pid: nil,
      address: nil,
      channel: nil,
      dir: nil,
      stderr: :queue.new(),
      stderr_level: :warning,
      exit_status: nil
    }

    with {:ok, python} <- Python.interpreter(options.python),
         {:ok, dir} <- make_runtime_dir(),
         state = %{state | dir: dir},
         {:ok, state} <- spawn_worker(state, python),
         {:ok, state} <- await_ready(state, deadline),
         {:ok, state} <- connect_and_load(state, deadline) do
      {:ok, _} =
        Registry.register(SynapseCore.WorkerRegistry, options.name, %{
          channel: state.channel,
          tools: options.tools
        })

      {:ok, state}
    else
      {:error, %Error{} = error} ->
        {:stop, {:shutdown, error}}

      {:error, %Error{} = error, state} ->
        stop_worker(state)
        {:stop, {:shutdown, error}}
    end
  end

  defp make_runtime_dir do
    base =
      case System.get_env("XDG_RUNTIME_DIR") do
        dir when is_binary(dir) and dir != "" ->
          if File.dir?(dir), do: dir, else: System.tmp_dir!()

        _ ->
          System.tmp_dir!()
      end

    dir = Path.join(base, "synapse-" <> Base.url_encode64(:rand.bytes(9)))

    with :ok <- File.mkdir(dir),
         :ok <- File.chmod(dir, 0o700) do
      {:ok, dir}
    else
      {:error, reason} ->
        {:error,
         Error.new(
           :startup_failed,
           "cannot create the runtime directory #{dir}: #{inspect(reason)}"
         )}
    end
  end

  defp spawn_worker(state, python) do
    options = state.options
    shepherd = Path.join(Python.priv_dir(), "bin/synapse-shepherd")
    socket = Path.join(state.dir, "worker.sock")

    config = %{
      argv: [python, "-m", "synapse_python.worker", "--listen", "unix:" <> socket],
      env: Python.worker_env(System.get_env(), options.python_path, options.env),
      cwd: options.cwd,
      grace_ms: options.shutdown_timeout,
      cleanup: state.dir
    }

    port =
      Port.open({:spawn_executable, shepherd}, [:binary, {:packet, 4}, :exit_status, :use_stdio])

    Port.command(port, Shepherd.encode_config(config))
    {:ok, %{state | port: port}}
  rescue
    error in ErlangError ->
      File.rm_rf(state.dir)

      {:error,
       Error.new(:startup_failed, "cannot start synapse-shepherd: #{Exception.message(error)}")}
  end

  defp await_ready(state, deadline) do
    port = state.port

    receive do
      {^port, {:data, data}} ->
        case Shepherd.decode(data) do
          {:ready, address} -> {:ok, %{state | address: address}}
          frame -> state |> handle_frame(frame) |> continue_startup(deadline, &await_ready/2)
        end

      {^port, {:exit_status, status}} ->
        {:error, startup_error("synapse-shepherd exited with status #{status}", state),
         %{state | port: nil}}
    after
      remaining(deadline) ->
        {:error,
         startup_error(
           "the worker was not ready within #{state.options.startup_timeout} ms",
           state
         ), state}
    end
  end

  defp connect_and_load(state, deadline) do
    with {:ok, channel} <- Channel.connect(state.address) do
      state = %{state | channel: channel}
      tag = make_ref()

      case Native.agent_load(
             channel.resource,
             tag,
             load_request(state.options),
             remaining(deadline)
           ) do
        {:ok, handle} -> await_load(state, tag, handle, deadline)
        {:error, %Error{} = error} -> {:error, load_error(error, state), state}
      end
    else
      {:error, error} -> {:error, error, state}
    end
  end

  defp await_load(state, tag, handle, deadline) do
    port = state.port

    receive do
      {:synapse_reply, ^tag, {:ok, _loaded}} ->
        {:ok, state}

      {:synapse_reply, ^tag, {:error, %Error{} = error}} ->
        {:error, load_error(error, state), state}

      {^port, {:data, data}} ->
        frame = Shepherd.decode(data)
        state = handle_frame(state, frame)
        # The worker died while loading: the load call fails at once.
        if match?({:exited, _}, frame), do: Channel.close(state.channel)
        await_load(state, tag, handle, deadline)
    after
      # The NIF enforces the same deadline; this only guards against a lost reply.
      remaining(deadline) + 1_000 ->
        Native.run_cancel(handle)
        {:error, startup_error("loading the agent did not finish in time", state), state}
    end
  end

  defp continue_startup(%{exit_status: nil} = state, deadline, next), do: next.(state, deadline)

  defp continue_startup(state, _deadline, _next) do
    {:error,
     startup_error(
       "the worker #{Shepherd.describe_exit(state.exit_status)} before it was ready",
       state
     ), state}
  end

  defp load_request(%Options{source: source, model: model}) do
    base = %{agent_id: @agent_id, reference: nil, spec: nil, model: model || ""}

    case source do
      {:ref, ref} ->
        %{base | reference: ref}

      {:spec, spec} ->
        %{base | spec: Map.put(spec, :name, ""), model: ""}
    end
  end

  defp load_error(%Error{kind: :worker_exited}, state) do
    startup_error("the worker exited while loading the agent", state)
  end

  defp load_error(%Error{} = error, state) do
    what =
      case state.options.source do
        {:ref, ref} -> "cannot load agent #{inspect(ref)}"
        {:spec, _} -> "cannot build the agent"
      end

    python = if type = error.details[:type], do: "#{type}: ", else: ""

    Error.new(
      :startup_failed,
      "#{what}: #{python}#{error.message}",
      Map.put(error.details, :reason, error.kind)
    )
  end

  defp startup_error(message, state) do
    stderr = :queue.to_list(state.stderr)
    hint = if stderr == [], do: "", else: "\n" <> Enum.join(stderr, "\n")

    details =
      %{stderr: stderr}
      |> put_if(:exit_status, state.exit_status)
      |> put_if(:os_pid, state.os_pid)

    Error.new(:startup_failed, message <> hint, details)
  end

  defp put_if(map, _key, nil), do: map
  defp put_if(map, key, value), do: Map.put(map, key, value)

  defp remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  ## Running

  @impl true
  def handle_call(:info, _from, state) do
    {:reply, %{os_pid: state.os_pid, address: state.address, agent: state.options.name}, state}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    case Shepherd.decode(data) do
      {:exited, status} = frame ->
        Channel.close(state.channel)
        state = handle_frame(state, frame)

        Logger.error(
          "Python worker #{state.os_pid} #{Shepherd.describe_exit(status)}#{stderr_hint(state)}"
        )

        {:stop, {:shutdown, {:worker_exited, status}}, state}

      frame ->
        {:noreply, handle_frame(state, frame)}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    Channel.close(state.channel)
    Logger.error("synapse-shepherd exited with status #{status}; the worker is gone with it")
    {:stop, {:shutdown, {:shepherd_exited, status}}, %{state | port: nil}}
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state), do: {:noreply, state}
  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}

  # Replies of calls this process abandoned at start-up.
  def handle_info({:synapse_reply, _tag, _reply}, state), do: {:noreply, state}

  defp stderr_hint(state) do
    case :queue.to_list(state.stderr) do
      [] -> ""
      lines -> "; its last output:\n" <> Enum.join(lines, "\n")
    end
  end

  ## Frames from the shepherd

  defp handle_frame(state, {:spawned, os_pid}) do
    Logger.metadata(worker_os_pid: os_pid)
    %{state | os_pid: os_pid}
  end

  defp handle_frame(state, {:stdout, line}) do
    Logger.info(line)
    state
  end

  defp handle_frame(state, {:stderr, line}) do
    state = log_stderr(state, line)
    stderr = :queue.in(line, state.stderr)
    stderr = if :queue.len(stderr) > @stderr_tail, do: :queue.drop(stderr), else: stderr
    %{state | stderr: stderr}
  end

  defp handle_frame(state, {:ready, address}) do
    Logger.info("SYNAPSE_READY " <> address)
    state
  end

  defp handle_frame(state, {:spawn_failed, message}) do
    Logger.error("cannot start the Python worker: " <> message)
    %{state | stderr: :queue.in(message, state.stderr)}
  end

  defp handle_frame(state, {:exited, status}), do: %{state | exit_status: status}

  defp handle_frame(state, {:unknown, frame}) do
    Logger.warning("unexpected frame from synapse-shepherd: #{inspect(frame, limit: 50)}")
    state
  end

  # Python's logging in the worker writes "LEVEL logger: message"; keep its
  # level. Lines without one continue the previous record (a traceback) or
  # are stray output, logged as warnings.
  @python_levels %{
    "DEBUG" => :debug,
    "INFO" => :info,
    "WARNING" => :warning,
    "ERROR" => :error,
    "CRITICAL" => :error
  }

  defp log_stderr(state, line) do
    level =
      case String.split(line, " ", parts: 2) do
        [word, _] when is_map_key(@python_levels, word) -> Map.fetch!(@python_levels, word)
        _ -> state.stderr_level
      end

    Logger.log(level, line)
    %{state | stderr_level: level}
  end

  ## Stopping

  @impl true
  def terminate(_reason, state) do
    if state.channel, do: Channel.close(state.channel)
    stop_worker(state)
  end

  # Graceful stop through the shepherd, waiting (bounded) for the worker's
  # exit so that when this returns no worker process is left.
  defp stop_worker(%{port: nil} = state), do: File.rm_rf(state.dir || "")

  defp stop_worker(%{port: port, exit_status: nil} = state) do
    if Port.info(port) do
      Port.command(port, Shepherd.encode_stop())

      await_exit(
        port,
        System.monotonic_time(:millisecond) + state.options.shutdown_timeout + 1_500
      )
    end

    close_port(port)
    File.rm_rf(state.dir)
  end

  defp stop_worker(%{port: port} = state) do
    close_port(port)
    File.rm_rf(state.dir)
  end

  defp await_exit(port, deadline) do
    receive do
      {^port, {:data, data}} ->
        case Shepherd.decode(data) do
          {:exited, _} -> :ok
          _ -> await_exit(port, deadline)
        end

      {^port, {:exit_status, _}} ->
        :ok
    after
      remaining(deadline) -> :timeout
    end
  end

  defp close_port(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end
end
