defmodule SynapseCore.AgentProcess do
  @moduledoc """
  Owns one Python worker of an agent (or a bridge): its OS process, through
  the `synapse-shepherd` port manager, its gRPC channel, its health and its
  logs.

  It is not in the path of any call. Once the worker is ready (and has
  loaded the agent), the process registers the worker's channel in
  `SynapseCore.WorkerRegistry` under the agent's name; callers look it up
  there and talk to the worker directly through the NIF.

  ## Failures

  The first start happens in `init/1`: if it fails, the agent does not start
  and the error (with Python's own message) is returned to whoever started
  it. After that, this process keeps its worker running:

    * When the worker exits (a crash, a signal, `os._exit`), every call in
      flight on it fails at once with `:worker_exited`.
    * Every `:health_interval` milliseconds the worker's gRPC health service
      is asked whether it serves; a worker that does not answer
      `SERVING` within `:health_timeout`, twice in a row, is considered hung
      and killed. A hung worker is therefore replaced within
      `2 × (:health_interval + :health_timeout)`.
    * Either way the worker is unregistered at once (calls meanwhile get
      `:unavailable`) and started again after a back-off: 100 ms, doubling
      at each failed start up to `:max_backoff`, with ±20% jitter, back to
      100 ms once a worker has served for 30 s. A worker that dies on every
      start costs a few starts per minute, not a busy loop.

  When this process stops, the worker gets SIGTERM and, after the agent's
  `:shutdown_timeout`, SIGKILL; the process waits for it to exit. If the
  whole BEAM dies, the shepherd sees its stdin close and does the same.

  Started by `SynapseCore.Agent` and `SynapseCore.Bridge`; not meant to be
  started directly.
  """

  use GenServer

  require Logger

  alias SynapseCore.{Agent.Options, Channel, Error, Native, Python, Shepherd, Workers}

  @agent_id "agent"
  @stderr_tail 20
  @min_backoff 100
  # A worker that served this long is healthy again: back-off starts over.
  @stable_after 30_000
  @health_failures 2

  @doc false
  @typedoc "Where a worker runs: spawned here, or already running at an address."
  @type location :: :local | {:remote, String.t()}

  @spec child_spec({Options.t(), non_neg_integer(), location()}) :: Supervisor.child_spec()
  def child_spec({%Options{} = options, index, location}) do
    %{
      id: {__MODULE__, index},
      start: {__MODULE__, :start_link, [{options, index, location}]},
      # Room for the worker's own graceful stop, then its SIGKILL.
      shutdown: options.shutdown_timeout + 2_000
    }
  end

  @doc false
  @spec start_link({Options.t(), non_neg_integer(), location()}) :: GenServer.on_start()
  def start_link({%Options{}, _index, _location} = arg), do: GenServer.start_link(__MODULE__, arg)

  @doc """
  The worker's OS pid and address, for observability. `os_pid` is `nil`
  while the worker is being restarted.
  """
  @spec info(pid()) :: %{
          os_pid: pos_integer() | nil,
          address: String.t() | nil,
          agent: term(),
          serving: boolean(),
          location: location()
        }
  def info(pid), do: GenServer.call(pid, :info)

  ## Start-up

  @impl true
  def init({options, index, location}) do
    Process.flag(:trap_exit, true)
    Logger.metadata(agent: inspect(options.name), worker: index)

    state = %{
      options: options,
      location: location,
      phase: :down,
      port: nil,
      os_pid: nil,
      address: nil,
      channel: nil,
      dir: nil,
      stderr: :queue.new(),
      stderr_level: :warning,
      exit_status: nil,
      startup_timer: nil,
      startup_ref: nil,
      load: nil,
      health: nil,
      health_failures: 0,
      serving_since: nil,
      attempt: 0,
      started: false,
      waiters: []
    }

    # The first start goes on after init returns, so that the workers of an
    # agent, and agents started together, start in parallel; start_link
    # callers wait for it with await_ready/2.
    case start_worker(state) do
      {:ok, state} -> {:ok, state}
      {:failed, error, state} -> {:ok, first_start_failed(state, error)}
    end
  end

  @doc """
  Waits until the worker serves (`:ok`) or its first start failed
  (`{:error, %SynapseCore.Error{}}`).
  """
  @spec await_ready(pid(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(pid, timeout), do: GenServer.call(pid, :await_ready, timeout)

  # A worker that never served is not restarted: its error is kept for
  # whoever awaits it (who then stops the agent). A remote worker is
  # attached in the background instead: the agent does not wait for (or fail
  # with) a machine it does not own.
  defp first_start_failed(%{location: {:remote, _}} = state, error),
    do: restart_later(state, error)

  defp first_start_failed(state, error) do
    state = teardown(state)
    Enum.each(state.waiters, &GenServer.reply(&1, {:error, error}))
    %{state | phase: {:failed, error}, waiters: []}
  end

  defp start_worker(%{location: {:remote, address}} = state) do
    ref = make_ref()
    timer = Process.send_after(self(), {:startup_timeout, ref}, state.options.startup_timeout)

    state = %{
      state
      | phase: :starting,
        startup_ref: ref,
        startup_timer: timer,
        health_failures: 0
    }

    ready(state, address)
  end

  defp start_worker(state) do
    with {:ok, python} <- Python.interpreter(state.options.python),
         {:ok, dir} <- make_runtime_dir() do
      state = %{
        state
        | dir: dir,
          phase: :starting,
          os_pid: nil,
          address: nil,
          channel: nil,
          exit_status: nil,
          stderr: :queue.new(),
          health_failures: 0
      }

      spawn_worker(state, python)
    else
      {:error, %Error{} = error} -> {:failed, error, state}
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

    bridge =
      case options.source do
        {:bridge, module} -> ["--bridge", module]
        _agent -> []
      end

    env =
      Python.worker_env(System.get_env(), options.python_path, options.env) ++
        [{"SYNAPSE_MAX_MESSAGE_BYTES", Integer.to_string(options.max_message_bytes)}]

    config = %{
      argv: [python, "-m", "synapse_python.worker", "--listen", "unix:" <> socket] ++ bridge,
      env: env,
      cwd: options.cwd,
      grace_ms: options.shutdown_timeout,
      cleanup: state.dir
    }

    port =
      Port.open({:spawn_executable, shepherd}, [:binary, {:packet, 4}, :exit_status, :use_stdio])

    Port.command(port, Shepherd.encode_config(config))
    ref = make_ref()
    timer = Process.send_after(self(), {:startup_timeout, ref}, options.startup_timeout)
    {:ok, %{state | port: port, startup_timer: timer, startup_ref: ref}}
  rescue
    error in ErlangError ->
      File.rm_rf(state.dir)

      {:failed,
       Error.new(:startup_failed, "cannot start synapse-shepherd: #{Exception.message(error)}"),
       state}
  end

  ## Events: start-up, health, exits

  @impl true
  def handle_info(message, state) do
    case handle_event(message, state) do
      {:ok, state} -> {:noreply, state}
      {:failed, error, %{started: false} = state} -> {:noreply, first_start_failed(state, error)}
      {:failed, error, state} -> {:noreply, restart_later(state, error)}
      {:stop, reason, state} -> {:stop, reason, state}
    end
  end

  @impl true
  def handle_call(:await_ready, from, state) do
    case state.phase do
      :serving -> {:reply, :ok, state}
      {:failed, error} -> {:reply, {:error, error}, state}
      _starting -> {:noreply, %{state | waiters: [from | state.waiters]}}
    end
  end

  def handle_call(:info, _from, state) do
    info = %{
      os_pid: state.os_pid,
      address: state.address,
      agent: state.options.name,
      serving: state.phase == :serving,
      location: state.location
    }

    {:reply, info, state}
  end

  # Returns {:ok, state}, {:failed, error, state} (the worker is lost) or
  # {:stop, reason, state}.
  defp handle_event({port, {:data, data}}, %{port: port} = state) do
    case Shepherd.decode(data) do
      {:ready, address} when state.phase == :starting ->
        ready(state, address)

      {:exited, status} = frame ->
        if state.channel, do: Channel.close(state.channel)
        state = handle_frame(state, frame)
        {:failed, exit_error(state, status), %{state | port: close_port(port)}}

      frame ->
        {:ok, handle_frame(state, frame)}
    end
  end

  defp handle_event({port, {:exit_status, status}}, %{port: port} = state) do
    if state.channel, do: Channel.close(state.channel)
    error = worker_error(state, "synapse-shepherd exited with status #{status}")
    {:failed, error, %{state | port: nil}}
  end

  defp handle_event({:EXIT, port, _reason}, state) when is_port(port), do: {:ok, state}

  defp handle_event({:synapse_reply, tag, reply}, %{load: {tag, _handle}} = state) do
    state = %{state | load: nil}

    case reply do
      {:ok, _loaded} -> {:ok, serving(state)}
      {:error, %Error{} = error} -> {:failed, load_error(error, state), state}
    end
  end

  defp handle_event({:synapse_reply, tag, reply}, %{health: {tag, _handle}} = state) do
    state = %{state | health: nil}

    case reply do
      {:ok, :serving} ->
        {:ok, schedule_health(%{state | health_failures: 0})}

      other ->
        failures = state.health_failures + 1

        if failures >= @health_failures do
          Logger.error(
            "Python worker #{state.os_pid} failed #{failures} health checks (last: #{describe_health(other)}); killing it"
          )

          kill_worker(state)
          error = Error.new(:worker_exited, "the worker stopped answering health checks")
          {:failed, error, state}
        else
          {:ok, schedule_health(%{state | health_failures: failures})}
        end
    end
  end

  # Replies of calls this process gave up on.
  defp handle_event({:synapse_reply, _tag, _reply}, state), do: {:ok, state}

  defp handle_event({:startup_timeout, ref}, %{startup_ref: ref, phase: phase} = state)
       when phase in [:starting, :loading] do
    error =
      worker_error(
        state,
        "the worker was not ready within #{state.options.startup_timeout} ms"
      )

    {:failed, error, state}
  end

  defp handle_event({:startup_timeout, _ref}, state), do: {:ok, state}

  defp handle_event(:health_check, %{phase: :serving, channel: channel} = state) do
    tag = make_ref()
    {:ok, handle} = Native.channel_health(channel.resource, tag, state.options.health_timeout)
    {:ok, %{state | health: {tag, handle}}}
  end

  defp handle_event(:health_check, state), do: {:ok, state}

  defp handle_event(:restart, %{phase: :backoff} = state), do: start_worker(state)
  defp handle_event(:restart, state), do: {:ok, state}

  defp handle_event({:EXIT, _pid, reason}, state), do: {:stop, reason, state}

  defp handle_event(message, state) do
    Logger.warning("unexpected message: #{inspect(message, limit: 20)}")
    {:ok, state}
  end

  defp ready(state, address) do
    state = %{state | address: address}

    case Channel.connect(address, connect_options(state)) do
      {:ok, channel} ->
        state = %{state | channel: channel}

        case state.options.source do
          # A bridge's worker serves its module from the start.
          {:bridge, _module} -> {:ok, serving(state)}
          _agent -> load(state)
        end

      {:error, error} ->
        {:failed, error, state}
    end
  end

  defp connect_options(%{location: :local, options: options}) do
    [max_message_bytes: options.max_message_bytes]
  end

  defp connect_options(%{options: options}) do
    [max_message_bytes: options.max_message_bytes, tls: options.tls, token: options.token]
  end

  defp load(state) do
    tag = make_ref()
    request = load_request(state.options)

    case Native.agent_load(state.channel.resource, tag, request, state.options.startup_timeout) do
      {:ok, handle} -> {:ok, %{state | phase: :loading, load: {tag, handle}}}
      {:error, %Error{} = error} -> {:failed, load_error(error, state), state}
    end
  end

  defp serving(state) do
    cancel_timer(state.startup_timer)

    {:ok, _} =
      Registry.register(SynapseCore.WorkerRegistry, state.options.name, %{
        channel: state.channel,
        tools: state.options.tools
      })

    :ok = :pg.join(SynapseCore.PG, Workers.group(state.options.name), self())
    if state.attempt > 0, do: Logger.info("Python worker #{state.os_pid} is serving again")

    Enum.each(state.waiters, &GenServer.reply(&1, :ok))

    schedule_health(%{
      state
      | phase: :serving,
        startup_timer: nil,
        started: true,
        waiters: [],
        serving_since: System.monotonic_time(:millisecond)
    })
  end

  defp schedule_health(%{options: %{health_interval: :infinity}} = state), do: state

  defp schedule_health(state) do
    Process.send_after(self(), :health_check, state.options.health_interval)
    state
  end

  defp describe_health({:ok, status}), do: Atom.to_string(status)
  defp describe_health({:error, %Error{kind: kind}}), do: Atom.to_string(kind)

  # The worker is lost: forget it, and start another after the back-off.
  defp restart_later(state, %Error{} = error) do
    served = state.serving_since && System.monotonic_time(:millisecond) - state.serving_since

    attempt = if served && served >= @stable_after, do: 0, else: state.attempt
    delay = backoff(attempt, state.options.max_backoff)

    Logger.error(
      "Python worker lost (#{error.message}); starting another in #{delay} ms",
      synapse_error: error.kind
    )

    teardown(state)
    Process.send_after(self(), :restart, delay)

    %{
      state
      | phase: :backoff,
        attempt: attempt + 1,
        serving_since: nil,
        os_pid: nil,
        address: nil
    }
  end

  defp backoff(attempt, max_backoff) do
    base = min(@min_backoff * Integer.pow(2, min(attempt, 20)), max_backoff)
    jitter = div(base, 5)
    base - jitter + :rand.uniform(2 * jitter + 1) - 1
  end

  # Forgets the worker: unregisters it, fails its calls, stops its process.
  defp teardown(state) do
    Registry.unregister(SynapseCore.WorkerRegistry, state.options.name)
    :pg.leave(SynapseCore.PG, Workers.group(state.options.name), self())
    if state.channel, do: Channel.close(state.channel)
    cancel_timer(state.startup_timer)

    if state.port do
      kill_worker(state)
      close_port(state.port)
    end

    if state.dir, do: File.rm_rf(state.dir)
    %{state | port: nil, channel: nil, load: nil, health: nil, startup_timer: nil}
  end

  defp kill_worker(%{port: port}) when is_port(port) do
    Port.command(port, Shepherd.encode_signal(9))
  rescue
    ArgumentError -> :ok
  end

  defp kill_worker(_state), do: :ok

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(timer), do: Process.cancel_timer(timer)

  ## Errors

  defp load_request(%Options{source: source, model: model, deps_factory: deps_factory}) do
    base = %{
      agent_id: @agent_id,
      reference: nil,
      spec: nil,
      model: model || "",
      deps_factory: deps_factory || ""
    }

    case source do
      {:ref, ref} -> %{base | reference: ref}
      {:spec, spec} -> %{base | spec: Map.put(spec, :name, ""), model: ""}
    end
  end

  defp load_error(%Error{kind: :worker_exited}, state) do
    worker_error(state, "the worker exited while loading the agent")
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

  defp exit_error(%{phase: phase} = state, status) when phase in [:starting, :loading] do
    worker_error(state, "the worker #{Shepherd.describe_exit(status)} before it was ready")
  end

  # While serving, the worker's output was logged as it came: the message
  # need not repeat it.
  defp exit_error(state, status) do
    %{worker_error(state, "") | message: "the worker #{Shepherd.describe_exit(status)}"}
  end

  defp worker_error(state, message) do
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
    Registry.unregister(SynapseCore.WorkerRegistry, state.options.name)
    :pg.leave(SynapseCore.PG, Workers.group(state.options.name), self())
    if state.channel, do: Channel.close(state.channel)
    stop_worker(state)
  end

  # Graceful stop through the shepherd, waiting (bounded) for the worker's
  # exit so that when this returns no worker process is left.
  defp stop_worker(%{port: nil} = state), do: File.rm_rf(state.dir || "")

  defp stop_worker(%{port: port} = state) do
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
      max(deadline - System.monotonic_time(:millisecond), 0) -> :timeout
    end
  end

  defp close_port(port) do
    Port.close(port)
    nil
  rescue
    ArgumentError -> nil
  end
end
