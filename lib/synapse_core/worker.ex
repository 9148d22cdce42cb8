defmodule SynapseCore.Worker do
  @min_backoff 100
  # A worker that served this long is healthy again: back-off starts over.
  @stable_after 30_000
  @health_failures 2
  # A draining worker is polled for its calls in flight this often, and
  # stopped at the latest after @drain_limit.
  @drain_poll 100
  @drain_limit 60_000

  @moduledoc """
  One Python worker of an agent or a bridge, as a state machine
  (`:gen_statem`): its OS process (through a `synapse-shepherd`, owned by a
  `SynapseCore.Shepherd`), its channel (its lane, or gRPC), its health.

  It is not in the path of any call. Once the worker serves, its channel is
  registered in `SynapseCore.WorkerRegistry` under the agent's name; callers
  look it up there and talk to the worker directly through the NIF.

  ## States

    * `:starting` - a local worker's OS process is starting, until it
      announces the address it listens on.
    * `:loading` - connected; the worker loads the agent (`LoadAgent`), or a
      remote bridge worker shows, in a first health check, that it serves
      the bridge's module. Together with
      `:starting`, bounded by `:startup_timeout`.
    * `:serving` - registered; health-checked every `:health_interval`.
    * `:draining` - the worker reports itself unhealthy (more stuck threads
      of sync tools or Bridge functions than `:max_stuck_threads`): it gets no new calls and is
      replaced once its calls in flight are done (at most
      #{div(@drain_limit, 1000)} s later).
    * `:backing_off` - the worker was lost; another starts after a back-off
      of #{@min_backoff} ms doubling up to `:max_backoff` (±20% jitter, back
      to #{@min_backoff} ms once a worker has served for
      #{div(@stable_after, 1000)} s), and only once the previous one's
      processes are all gone.
    * `:failed` - the first start failed for good (see below).

  ## Failures

  A worker that exits (a crash, a signal, `os._exit`) fails every call in
  flight on it at once with `:worker_exited`. A worker that does not answer
  its health check (`SERVING` within `:health_timeout`) #{@health_failures}
  times in a row is killed: a hung worker is replaced within
  `#{@health_failures} × (:health_interval + :health_timeout)`. Meanwhile calls get
  `:unavailable`, or, when the last start failed for a reason that retrying
  cannot fix, that reason: `:startup_failed` (with Python's message),
  `:unauthenticated` or `:tls_error`.

  An agent's health check asks whether the worker still hosts the agent:
  a remote worker restarted at the same address between two checks
  answers that it does not, and is connected to again, which loads the
  agent into it.

  The first start decides whether the agent starts:

    * a local worker whose first start fails, for any reason, fails the
      start: `start_link/1` (or `SynapseCore.start_agent/1`) returns the
      error, with Python's own message, and nothing is left running;
    * a remote worker that is merely not up yet (connection refused, no
      answer) is transient: the agent starts, and the worker keeps trying
      with back-off. One that refuses the agent (a wrong token, a TLS name
      or CA mismatch, a module it cannot import) is a permanent
      misconfiguration, and fails the start with its own kind;
    * with `await_ready: false` nobody waits for the first start: a
      permanent failure leaves the worker `:failed` (every call answers the
      error, nothing is retried) and a transient one is retried.

  A permanent failure after the worker served once (the remote's token was
  changed, the module was removed) is retried with back-off, while every
  call answers the failure.

  When this process stops, the worker gets SIGTERM and, after
  `:shutdown_timeout`, SIGKILL; it returns once the worker's process group
  is gone, ended by the BEAM itself when the shepherd does not confirm it
  (see `SynapseCore.Shepherd`). If the whole BEAM dies, the shepherd sees
  its stdin close and does the same.

  Started by `SynapseCore.Agent` and `SynapseCore.Bridge`; not meant to be
  started directly.
  """

  @behaviour :gen_statem

  require Logger

  alias SynapseCore.{Agent.Options, Channel, Error, Native, Python, Shepherd, Telemetry, Workers}
  alias SynapseCore.Worker.Failure

  @typedoc "Where a worker runs: spawned here, or already running at an address."
  @type location :: :local | {:remote, String.t()}

  @typedoc """
  Where the first start's outcome is reported, for a starter that waits:
  its alias, its pid and until when it waits (monotonic milliseconds).
  """
  @type ready_to :: {reference(), pid(), integer()} | nil

  @log_levels [:debug, :info, :warning, :error, :critical]

  @typedoc "The level of Python's logging in a worker (the `:log_level` option)."
  @type log_level :: :debug | :info | :warning | :error | :critical

  @doc false
  @spec log_levels() :: [log_level()]
  def log_levels, do: @log_levels

  @typedoc "What `info/1` tells."
  @type info :: %{
          os_pid: pos_integer() | nil,
          address: String.t() | nil,
          lane: String.t() | nil,
          agent: term(),
          state: atom(),
          serving: boolean(),
          location: location(),
          stuck_threads: non_neg_integer() | nil
        }

  defstruct [
    :options,
    :index,
    :location,
    :ready_to,
    :starter_monitor,
    :shepherd,
    :os_pid,
    :address,
    :channel,
    :dir,
    :pending,
    :serving_since,
    :error,
    :stuck_threads,
    :drain_deadline,
    :started_at,
    retiring: [],
    health_failures: 0,
    attempt: 0,
    first: :pending,
    waiters: [],
    restart_due: false
  ]

  @doc false
  @spec child_spec({Options.t(), non_neg_integer(), location(), ready_to()}) ::
          Supervisor.child_spec()
  def child_spec({%Options{} = options, index, _location, _ready_to} = arg) do
    %{
      id: {__MODULE__, index},
      start: {__MODULE__, :start_link, [arg]},
      # Room for the worker's own graceful stop, then its SIGKILL.
      shutdown: options.shutdown_timeout + 2_000,
      # A worker whose first start failed, with nobody left to report it
      # to, exits {:shutdown, error}: its agent then stops (the agent's
      # supervisor shuts down with its significant children).
      restart: :transient,
      significant: true
    }
  end

  @doc false
  @spec start_link({Options.t(), non_neg_integer(), location(), ready_to()}) ::
          :gen_statem.start_ret()
  def start_link({%Options{}, _index, _location, _ready_to} = arg),
    do: :gen_statem.start_link(__MODULE__, arg, [])

  @doc """
  The worker's OS pid, address, state and stuck threads, for
  observability. `os_pid` is `nil` while the worker is being restarted
  and for remote workers; `stuck_threads` is the number of threads of sync
  Python tools or Bridge functions still running after their call ended
  (timed out, cancelled), `nil` when unknown (remote workers).
  """
  @spec info(pid()) :: info()
  def info(pid), do: :gen_statem.call(pid, :info)

  @doc false
  # A run on this worker was answered that the worker has no such agent
  # (a remote worker that was restarted without it): it is checked now.
  @spec agent_missing(pid()) :: :ok
  def agent_missing(pid) do
    send(pid, :synapse_agent_missing)
    :ok
  end

  @doc """
  Waits for the worker's first start: `:ok` once it serves (or, for a
  remote worker that is not up yet, once it retries in the background), or
  `{:error, %SynapseCore.Error{}}` when it failed.
  """
  @spec await_ready(pid(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(pid, timeout) do
    :gen_statem.call(pid, :await_ready, timeout)
  catch
    :exit, {{:shutdown, %Error{} = error}, _} ->
      {:error, error}

    :exit, {:timeout, _} ->
      {:error, Error.new(:startup_failed, "the worker was not ready within #{timeout} ms")}

    :exit, _ ->
      {:error, Error.new(:cancelled, "the worker was stopped before it was ready")}
  end

  @doc """
  The agent id a worker hosts an agent under, for logs on both sides:
  the agent's name, as Elixir writes it.

      iex> SynapseCore.Worker.agent_id(:support)
      "support"
      iex> SynapseCore.Worker.agent_id({:support, 2})
      "{:support, 2}"
  """
  @spec agent_id(term()) :: String.t()
  def agent_id(name) when is_atom(name), do: Atom.to_string(name)
  def agent_id(name) when is_binary(name), do: name
  def agent_id(name), do: inspect(name)

  ## Start-up

  @impl true
  def callback_mode, do: :handle_event_function

  @impl true
  def init({options, index, location, ready_to}) do
    Process.flag(:trap_exit, true)
    Logger.metadata(agent: inspect(options.name), worker: index)

    # A worker restarted (after a crash) once its agent's start is over is
    # part of no start: nobody waits for it.
    ready_to =
      case ready_to do
        {_alias, _starter, deadline} = ready_to ->
          if System.monotonic_time(:millisecond) < deadline, do: ready_to

        nil ->
          nil
      end

    data = %__MODULE__{options: options, index: index, location: location, ready_to: ready_to}
    {:ok, :starting, data, [{:next_event, :internal, :start}]}
  end

  @impl true
  def handle_event(:internal, :start, :starting, data) do
    startup = {{:timeout, :startup}, data.options.startup_timeout, nil}
    data = %{data | started_at: System.monotonic_time()}
    event(:start, %{system_time: System.system_time()}, data, %{attempt: data.attempt})

    case start(data) do
      {:ok, data} -> {:keep_state, data, [startup]}
      {:connected, data} -> connected(data, [startup])
      {:error, error, data} -> lost(:starting, data, error)
    end
  end

  # From the worker's shepherd.
  def handle_event(:info, {:shepherd, pid, event}, state, %{shepherd: pid} = data) do
    shepherd_event(event, state, data)
  end

  # From the shepherd of a worker that was replaced: once it is gone, so
  # are all its processes.
  def handle_event(:info, {:shepherd, pid, {:exited, _exit}}, state, data) do
    retired(pid, state, data)
  end

  def handle_event(:info, {:shepherd, _pid, _event}, _state, _data), do: :keep_state_and_data

  def handle_event(:info, {:EXIT, pid, reason}, state, %{shepherd: pid} = data) do
    # The shepherd's process died before it reported the worker's end (a
    # bug): end the group from here.
    Shepherd.kill_group(data.os_pid)

    error =
      Failure.worker("the worker's shepherd process exited: #{inspect(reason)}", data.os_pid)

    lost(state, %{data | shepherd: nil}, error)
  end

  def handle_event(:info, {:EXIT, pid, reason}, state, %{channel: %{reader: pid}} = data) do
    # The process reading the worker's lane died (a bug): its calls cannot
    # be answered any more.
    error = Failure.worker("the worker's lane reader exited: #{inspect(reason)}", data.os_pid)

    lost(state, data, error)
  end

  def handle_event(:info, {:EXIT, pid, _reason}, state, data) do
    if pid in data.retiring, do: retired(pid, state, data), else: :keep_state_and_data
  end

  def handle_event(:info, {:synapse_reply, tag, reply}, state, %{pending: {tag, _, what}} = data) do
    reply(what, reply, state, %{data | pending: nil})
  end

  # Replies of calls this process gave up on.
  def handle_event(:info, {:synapse_reply, _tag, _reply}, _state, _data),
    do: :keep_state_and_data

  # A health check now (unless one is in flight): it finds the agent
  # missing and has it loaded again (see reply/4), whatever the interval.
  def handle_event(:info, :synapse_agent_missing, :serving, %{pending: nil}),
    do: {:keep_state_and_data, [{{:timeout, :health}, 0, nil}]}

  def handle_event(:info, :synapse_agent_missing, _state, _data), do: :keep_state_and_data

  def handle_event({:timeout, :startup}, nil, state, data) when state in [:starting, :loading] do
    message = "the worker was not ready within #{data.options.startup_timeout} ms"
    lost(state, data, Failure.worker(message, data.os_pid))
  end

  def handle_event({:timeout, :health}, nil, :serving, data) do
    tag = make_ref()

    service = serving_health_service(data.options)

    {:ok, handle} =
      Native.probe_health(data.channel.resource, tag, service, data.options.health_timeout)

    {:keep_state, %{data | pending: {tag, handle, :health}}}
  end

  def handle_event({:timeout, :drain}, nil, :draining, data) do
    if Native.channel_load(data.channel.resource) == 0 or
         System.monotonic_time(:millisecond) >= data.drain_deadline do
      error = Error.new(:unavailable, "the worker was unhealthy and is being replaced")
      event(:exit, %{system_time: System.system_time()}, data, %{error: error})
      event(:restart, %{delay: 0}, data, %{attempt: data.attempt})
      data = data |> retire(error, &Shepherd.stop_async/1) |> without_process()
      {:next_state, :backing_off, data, [{:state_timeout, 0, :restart}]}
    else
      {:keep_state_and_data, [{{:timeout, :drain}, @drain_poll, nil}]}
    end
  end

  def handle_event(:state_timeout, :restart, :backing_off, %{retiring: []} = data) do
    {:next_state, :starting, %{data | restart_due: false}, [{:next_event, :internal, :start}]}
  end

  def handle_event(:state_timeout, :restart, :backing_off, data) do
    {:keep_state, %{data | restart_due: true}}
  end

  # The starter that waited for a failed first start is gone without
  # stopping the agent: the agent must not linger, holding its name.
  def handle_event(:info, {:DOWN, ref, :process, _, _}, :failed, %{starter_monitor: ref} = data) do
    {:stop, {:shutdown, data.error}}
  end

  def handle_event({:call, from}, :await_ready, state, data) do
    case {data.first, state} do
      {:done, :failed} -> {:keep_state_and_data, [{:reply, from, {:error, data.error}}]}
      {:done, _} -> {:keep_state_and_data, [{:reply, from, :ok}]}
      {:pending, _} -> {:keep_state, %{data | waiters: [from | data.waiters]}}
    end
  end

  def handle_event({:call, from}, :info, state, data) do
    info = %{
      os_pid: data.os_pid,
      address: data.address,
      lane: data.address && lane_address(data, data.dir),
      agent: data.options.name,
      state: state,
      serving: state == :serving,
      location: data.location,
      stuck_threads: data.stuck_threads
    }

    {:keep_state_and_data, [{:reply, from, info}]}
  end

  # Timers of a state the worker has left.
  def handle_event({:timeout, timer}, nil, _state, _data)
      when timer in [:health, :drain, :startup],
      do: :keep_state_and_data

  def handle_event(type, content, _state, _data) do
    Logger.warning("unexpected event #{inspect(type)}: #{inspect(content, limit: 20)}")
    :keep_state_and_data
  end

  ## Starting

  defp start(%{location: {:remote, address}} = data) do
    connect(%{data | address: address, health_failures: 0})
  end

  defp start(data) do
    options = data.options

    with {:ok, python} <- Python.interpreter(options.python),
         {:ok, dir} <- make_runtime_dir(),
         {:ok, shepherd} <- start_shepherd(data, python, dir) do
      {:ok,
       %{
         data
         | shepherd: shepherd,
           dir: dir,
           os_pid: nil,
           address: nil,
           channel: nil,
           stuck_threads: nil,
           health_failures: 0
       }}
    else
      {:error, %Error{} = error} -> {:error, Failure.permanent(error, :spawn_failed), data}
    end
  end

  defp start_shepherd(data, python, dir) do
    metadata = Keyword.take(Logger.metadata(), [:agent, :worker])

    with {:error, error} <- Shepherd.start_link(shepherd_config(data, python, dir), metadata) do
      File.rm_rf(dir)
      {:error, error}
    end
  end

  defp shepherd_config(data, python, dir) do
    options = data.options
    socket = Path.join(dir, "worker.sock")

    source =
      case options.source do
        {:bridge, module} -> ["--bridge", module]
        _agent -> []
      end

    env =
      Python.worker_env(System.get_env(), options.python_path, options.env) ++
        [
          {"SYNAPSE_MAX_MESSAGE_BYTES", Integer.to_string(options.max_message_bytes)},
          {"SYNAPSE_LOG_LEVEL", options.log_level |> Atom.to_string() |> String.upcase()},
          {"SYNAPSE_MAX_STUCK_THREADS", Integer.to_string(options.max_stuck_threads)},
          {"SYNAPSE_BUSY_WAIT_US", Integer.to_string(options.busy_wait_us)},
          Shepherd.log_fd_env()
        ]

    %{
      argv:
        [python, "-m", "synapse_python.worker", "--listen", "unix:" <> socket] ++
          lane_argv(data, dir) ++ ["--grace", grace(options)] ++ source,
      env: env,
      cwd: options.cwd,
      grace_ms: options.shutdown_timeout,
      cleanup: dir
    }
  end

  # A local worker also serves its calls on its lane, a second socket in
  # its private directory, which they then take; unless the agent asks for
  # gRPC (`:transport`).
  defp lane_address(%{location: :local, options: %{transport: :lane}}, dir) when is_binary(dir),
    do: "unix:" <> Path.join(dir, "lane.sock")

  defp lane_address(_data, _dir), do: nil

  defp lane_argv(data, dir) do
    case lane_address(data, dir) do
      nil -> []
      address -> ["--lane", address]
    end
  end

  # The worker's own grace for its calls in flight, within the shepherd's
  # (SIGTERM to SIGKILL) so that it ends them and exits by itself.
  defp grace(options) do
    seconds = max(options.shutdown_timeout - 1_000, div(options.shutdown_timeout, 2)) / 1_000
    :erlang.float_to_binary(seconds, decimals: 3)
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

  defp connect(data) do
    case Channel.connect(data.address, connect_options(data)) do
      {:ok, channel} -> {:connected, %{data | channel: channel}}
      {:error, %Error{} = error} -> {:error, Failure.permanent(error, :invalid_argument), data}
    end
  end

  defp connect_options(%{location: :local, options: options} = data) do
    [max_message_bytes: options.max_message_bytes, lane: lane_address(data, data.dir)]
  end

  defp connect_options(%{options: options}) do
    [max_message_bytes: options.max_message_bytes, tls: options.tls, token: options.token]
  end

  # Connected: load the agent; a bridge's worker serves its module from the
  # start, but a remote one must first show that it lets this node in.
  defp connected(data, actions) do
    case {data.options.source, data.location} do
      {{:bridge, _}, :local} -> serving(data, actions)
      {{:bridge, _}, _remote} -> request(:health, data, actions)
      _agent -> request(:load, data, actions)
    end
  end

  defp request(what, data, actions) do
    tag = make_ref()
    options = data.options

    started =
      case what do
        :load ->
          Native.agent_load(
            data.channel.resource,
            tag,
            load_request(options),
            options.startup_timeout
          )

        :health ->
          Native.probe_health(
            data.channel.resource,
            tag,
            bridge_health_service(options.source),
            options.startup_timeout
          )
      end

    case started do
      {:ok, handle} ->
        {:next_state, :loading, %{data | pending: {tag, handle, what}}, actions}

      {:error, %Error{} = error} ->
        lost(:loading, data, Failure.load(error, data.options.source, data.os_pid))
    end
  end

  # The health service a worker reports its bridge of `module` under
  # (`synapse_python._worker.BRIDGE_HEALTH_PREFIX`): a worker that was not
  # started with `--bridge module` answers it NOT_FOUND, where the
  # worker's own health ("") would let the bridge start and every call fail.
  defp bridge_health_service({:bridge, module}), do: "synapse.bridge.module/" <> module

  # What a serving worker's health checks ask: for an agent, whether the
  # worker still hosts it (`synapse_python._worker.AGENT_HEALTH_PREFIX`).
  # A remote worker restarted at the same address between two checks is
  # reached again by the channel's next connection, healthy but without
  # the agent: its own health ("") would pass, and every call fail.
  defp serving_health_service(%Options{source: {:bridge, _module}}), do: ""
  defp serving_health_service(%Options{name: name}), do: "synapse.agent/" <> agent_id(name)

  defp load_request(%Options{source: source, model: model, name: name} = options) do
    base = %{
      agent_id: agent_id(name),
      reference: nil,
      spec: nil,
      model: model || "",
      deps_factory: options.deps_factory || ""
    }

    case source do
      {:ref, ref} -> %{base | reference: ref}
      {:spec, spec} -> %{base | spec: Map.put(spec, :name, agent_id(name)), model: ""}
    end
  end

  ## Events of the worker's shepherd

  defp shepherd_event({:spawned, os_pid}, _state, data) do
    Logger.metadata(worker_os_pid: os_pid)
    {:keep_state, %{data | os_pid: os_pid}}
  end

  defp shepherd_event({:ready, address}, :starting, data) do
    case connect(%{data | address: address}) do
      {:connected, data} -> connected(data, [])
      {:error, error, data} -> lost(:starting, data, error)
    end
  end

  defp shepherd_event({:ready, _address}, _state, _data), do: :keep_state_and_data

  defp shepherd_event({:status, %{"stuck_threads" => stuck}}, _state, data)
       when is_integer(stuck) do
    {:keep_state, %{data | stuck_threads: stuck}}
  end

  defp shepherd_event({:status, _status}, _state, _data), do: :keep_state_and_data

  defp shepherd_event({:exited, exit}, state, data) do
    error = Failure.exited(exit, state in [:starting, :loading], data.os_pid)
    lost(state, %{data | shepherd: nil}, error)
  end

  defp retired(pid, state, data) do
    data = %{data | retiring: List.delete(data.retiring, pid)}

    if state == :backing_off and data.restart_due and data.retiring == [] do
      {:next_state, :starting, %{data | restart_due: false}, [{:next_event, :internal, :start}]}
    else
      {:keep_state, data}
    end
  end

  ## Replies of the worker's calls

  defp reply(:load, {:ok, _loaded}, _state, data), do: serving(data, [])

  defp reply(:load, {:error, error}, state, data),
    do: lost(state, data, Failure.load(error, data.options.source, data.os_pid))

  # A remote bridge let this node in.
  defp reply(:health, {:ok, _status}, :loading, data), do: serving(data, [])

  defp reply(:health, {:error, error}, :loading, data),
    do: lost(:loading, data, Failure.load(error, data.options.source, data.os_pid))

  defp reply(:health, {:ok, :serving}, :serving, data) do
    {:keep_state, %{data | health_failures: 0}, [health_timer(data)]}
  end

  # The worker says it should not get calls (too many stuck threads, or it
  # is shutting down by itself): replace it once its calls are done.
  defp reply(:health, {:ok, :not_serving}, :serving, data) do
    Logger.warning(
      "#{described(data)} reports itself unhealthy " <>
        "(#{data.stuck_threads || "unknown"} stuck threads); " <>
        "replacing it once its calls in flight are done"
    )

    Workers.leave(data.options.name)
    deadline = System.monotonic_time(:millisecond) + @drain_limit
    {:next_state, :draining, %{data | drain_deadline: deadline}, [{{:timeout, :drain}, 0, nil}]}
  end

  # The worker no longer hosts the agent (a remote worker that was
  # restarted): connect again, which loads it.
  defp reply(:health, {:error, %Error{kind: :not_found}}, :serving, data) do
    Logger.warning("#{described(data)} no longer hosts the agent; loading it again")
    lost(:serving, data, Error.new(:unavailable, "the worker no longer hosted the agent"))
  end

  defp reply(:health, other, :serving, data) do
    failures = data.health_failures + 1

    if failures >= @health_failures do
      Logger.error(
        "#{described(data)} failed #{failures} health checks " <>
          "(last: #{describe_health(other)}); #{replacement(data)}"
      )

      error = Error.new(:worker_exited, "the worker stopped answering health checks")
      lost(:serving, data, error)
    else
      {:keep_state, %{data | health_failures: failures}, [health_timer(data)]}
    end
  end

  defp reply(_what, _reply, _state, _data), do: :keep_state_and_data

  # The worker, for log lines: a remote one has no OS pid here.
  defp described(%{location: {:remote, address}}), do: "Python worker at #{address}"
  defp described(data), do: "Python worker #{data.os_pid}"

  # What follows a worker's failed health checks.
  defp replacement(%{location: :local}), do: "killing it"
  defp replacement(_remote), do: "connecting to it again"

  defp describe_health({:ok, status}), do: Atom.to_string(status)
  defp describe_health({:error, %Error{kind: kind}}), do: Atom.to_string(kind)

  ## Serving

  defp serving(data, actions) do
    Workers.join(data.options, data.channel, data.index)
    event(:ready, %{duration: System.monotonic_time() - data.started_at}, data, %{})
    if data.attempt > 0, do: Logger.info("#{described(data)} is serving again")

    data = outcome(%{data | serving_since: System.monotonic_time(:millisecond), error: nil}, :ok)

    cancel = {{:timeout, :startup}, :cancel}
    {:next_state, :serving, data, [cancel, health_timer(data) | actions]}
  end

  defp health_timer(%{options: %{health_interval: :infinity}}),
    do: {{:timeout, :health}, :infinity, nil}

  defp health_timer(data), do: {{:timeout, :health}, data.options.health_interval, nil}

  ## Losing a worker

  # The worker is lost (or never came): report a failed first start, or
  # forget the worker and start another after the back-off.
  defp lost(state, data, %Error{} = error) do
    cancel = [{{:timeout, :startup}, :cancel}, {{:timeout, :health}, :cancel}]
    event(:exit, %{system_time: System.system_time()}, data, %{error: error})

    if data.first == :pending and give_up?(data, error) do
      data = retire(data, error)
      Logger.error("Python worker failed to start: #{error.message}", synapse_error: error.kind)
      data = outcome(data, {:error, error})

      monitor =
        case data.ready_to do
          {_alias, starter, _deadline} -> Process.monitor(starter)
          nil -> nil
        end

      {:next_state, :failed, %{data | starter_monitor: monitor}, cancel}
    else
      backoff(state, data, error, cancel)
    end
  end

  # A first start gives up when retrying cannot help, and for a local
  # worker whose starter waits for it.
  defp give_up?(data, error) do
    Failure.permanent?(error) or (data.location == :local and data.ready_to != nil)
  end

  defp backoff(_state, data, error, actions) do
    served = data.serving_since && System.monotonic_time(:millisecond) - data.serving_since
    attempt = if served && served >= @stable_after, do: 0, else: data.attempt
    delay = backoff_delay(attempt, data.options.max_backoff)

    Logger.error(
      "Python worker lost (#{error.message}); starting another in #{delay} ms",
      synapse_error: error.kind
    )

    event(:restart, %{delay: delay}, data, %{attempt: attempt + 1})

    # A remote worker that is not up yet does not hold the agent's start;
    # a local one's first start is over once it serves, or fails for good.
    data =
      if data.first == :pending and data.location != :local,
        do: outcome(data, :ok),
        else: data

    data = %{without_process(retire(data, error)) | attempt: attempt + 1, serving_since: nil}

    {:next_state, :backing_off, data, [{:state_timeout, delay, :restart} | actions]}
  end

  defp backoff_delay(attempt, max_backoff) do
    base = min(@min_backoff * Integer.pow(2, min(attempt, 20)), max_backoff)
    jitter = div(base, 5)
    base - jitter + :rand.uniform(2 * jitter + 1) - 1
  end

  # Forgets the worker: unregisters it (calls now get `error`'s cause),
  # fails its calls, and has its shepherd kill its processes (or stop them
  # gracefully). The new worker waits for that shepherd to be gone.
  defp retire(data, error, stop \\ &Shepherd.kill/1) do
    Workers.down(data.options.name, error)
    if data.channel, do: Channel.close(data.channel)

    retiring =
      case data.shepherd do
        nil ->
          data.retiring

        shepherd ->
          stop.(shepherd)
          [shepherd | data.retiring]
      end

    %{data | shepherd: nil, channel: nil, pending: nil, error: error, retiring: retiring}
  end

  # Before the next start: the retired process is no longer this worker's,
  # and info/1 and the next :start must not show it.
  defp without_process(data), do: %{data | os_pid: nil, address: nil, stuck_threads: nil}

  # The first start's outcome, for whoever waits for it.
  defp outcome(%{first: :pending} = data, result) do
    Enum.each(data.waiters, &:gen_statem.reply(&1, result))

    case data.ready_to do
      {alias, _starter, _deadline} -> send(alias, {alias, data.index, result})
      nil -> :ok
    end

    %{data | first: :done, waiters: []}
  end

  defp outcome(data, _result), do: data

  # A `[:synapse, :worker, name]` event (see `SynapseCore.Telemetry`).
  defp event(name, measurements, data, metadata) do
    Telemetry.execute(
      [:synapse, :worker, name],
      measurements,
      Map.merge(
        %{
          agent: data.options.name,
          worker: data.index,
          location: data.location,
          os_pid: data.os_pid
        },
        metadata
      )
    )
  end

  ## Stopping

  @impl true
  def terminate(_reason, _state, data) do
    Workers.leave(data.options.name)
    if data.channel, do: Channel.close(data.channel)
    if data.shepherd, do: Shepherd.stop(data.shepherd)
    Enum.each(data.retiring, &Shepherd.stop/1)
  end
end
