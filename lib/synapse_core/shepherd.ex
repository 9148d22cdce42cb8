defmodule SynapseCore.Shepherd do
  @moduledoc false
  # The BEAM side of one `synapse-shepherd` (native/synapse_shepherd): the
  # process that owns its port, for one OS worker process. It turns the
  # worker's output into Logger entries (`SynapseCore.Shepherd.Log`), acks
  # output frames so that the shepherd stops reading the worker's pipes
  # while this process is behind (the worker then blocks in `write`, and the
  # mailbox stays bounded), and tells its owner, a `SynapseCore.Worker`,
  # what the worker does:
  #
  #     {:shepherd, pid, {:spawned, os_pid}}
  #     {:shepherd, pid, {:ready, address}}
  #     {:shepherd, pid, {:status, map}}      # e.g. %{"stuck_threads" => 2}
  #     {:shepherd, pid, {:exited, exit}}     # always the last; then it exits :normal
  #
  # The worker is the leader of its own process group, whose id is its pid.
  # The end of that group is confirmed by the shepherd's last frame. When
  # that frame does not come (the shepherd was killed, or is stopped, or
  # does not answer a stop in time), this process ends the group itself and
  # kills the shepherd: no process of the worker's survives a
  # `SynapseCore.Shepherd`, whichever process dies first. Its owner dying
  # counts as a stop.

  use GenServer

  require Logger

  alias SynapseCore.{Error, Native, Python}
  alias SynapseCore.Shepherd.{Log, Protocol}

  # Output frames the shepherd sends ahead of acknowledgements, and how many
  # are acknowledged at once.
  @window 64
  @ack_every 32
  # The descriptor of the worker's log pipe.
  @log_fd 3
  # How long the shepherd has to confirm a kill, and a stop past its grace.
  @confirm_timeout 2_000
  @stop_slack 1_500

  @typedoc "How the worker ended, for its owner."
  @type exit :: %{
          status: Protocol.exit_status() | nil,
          message: String.t(),
          output: [String.t()]
        }

  @doc "The environment variable that names the worker's log descriptor."
  @spec log_fd_env() :: {String.t(), String.t()}
  def log_fd_env, do: {"SYNAPSE_LOG_FD", Integer.to_string(@log_fd)}

  @doc """
  Starts the shepherd and, under it, the worker of `config` (see
  `SynapseCore.Shepherd.Protocol.config/0`; `window` and `log_fd` are set
  here). Reports to the calling process.
  """
  @spec start_link(map(), keyword()) :: {:ok, pid()} | {:error, Error.t()}
  def start_link(config, metadata \\ []) do
    config = Map.merge(config, %{window: @window, log_fd: @log_fd})

    case GenServer.start_link(__MODULE__, {config, self(), metadata}) do
      {:ok, pid} -> {:ok, pid}
      {:error, %Error{} = error} -> {:error, error}
    end
  end

  @doc """
  Stops the worker gracefully (SIGTERM, then SIGKILL after the config's
  grace) and returns once its group is gone.
  """
  @spec stop(pid()) :: :ok
  def stop(shepherd) do
    GenServer.call(shepherd, :stop, :infinity)
  catch
    # Already gone: it ended its group before it went.
    :exit, _ -> :ok
  end

  @doc "Like `stop/1`, without waiting: the `{:exited, _}` report follows."
  @spec stop_async(pid()) :: :ok
  def stop_async(shepherd), do: GenServer.cast(shepherd, :stop)

  @doc "SIGKILLs the worker's group; the `{:exited, _}` report follows."
  @spec kill(pid()) :: :ok
  def kill(shepherd), do: GenServer.cast(shepherd, :kill)

  @doc "Sends `signal` to the worker's process group (tests and diagnostics)."
  @spec signal(pid(), 1..64) :: :ok
  def signal(shepherd, signal), do: GenServer.cast(shepherd, {:signal, signal})

  @doc "The OS pid of the `synapse-shepherd` process itself."
  @spec os_pid(pid()) :: pos_integer() | nil
  def os_pid(shepherd), do: GenServer.call(shepherd, :os_pid)

  @doc """
  Ends a worker's process group from the BEAM: for an owner that lost its
  `SynapseCore.Shepherd` before it reported the worker's end.
  """
  @spec kill_group(pos_integer() | nil) :: :ok
  def kill_group(nil), do: :ok

  def kill_group(os_pid) do
    Native.shepherd_kill(os_pid, true)
    :ok
  end

  @impl true
  def init({config, owner, metadata}) do
    Process.flag(:trap_exit, true)
    Logger.metadata(metadata)
    executable = Path.join(Python.priv_dir(), "bin/synapse-shepherd")
    # The port would say only :enoent or :eacces, not of which file.
    :ok = check_executable(executable)

    port =
      Port.open({:spawn_executable, executable}, [
        :binary,
        {:packet, 4},
        :exit_status,
        :use_stdio
      ])

    Port.command(port, Protocol.encode_config(config))
    {:os_pid, shepherd_os_pid} = Port.info(port, :os_pid)

    {:ok,
     %{
       port: port,
       owner: owner,
       shepherd_os_pid: shepherd_os_pid,
       os_pid: nil,
       log: Log.new(),
       unacked: 0,
       grace: config.grace_ms,
       cleanup: config.cleanup,
       confirm_timer: nil,
       stoppers: []
     }}
  rescue
    # Any exception, and never its stacktrace: `Port.command/2`'s frame
    # holds the config, environment and secrets included (a shepherd gone
    # before it was sent its config fails it).
    error in Error ->
      {:stop, error}

    error ->
      {:stop,
       Error.new(:startup_failed, "cannot start synapse-shepherd: #{Exception.message(error)}")}
  end

  defp check_executable(path) do
    problem =
      case File.stat(path) do
        {:ok, %{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0 -> nil
        {:ok, %{type: :regular}} -> "it is not executable"
        {:ok, %{type: type}} -> "it is a #{type}, not a file"
        {:error, :enoent} -> "it is missing"
        {:error, reason} -> "#{:file.format_error(reason)}"
      end

    if problem do
      raise Error.new(
              :startup_failed,
              "cannot start synapse-shepherd at #{path}: #{problem} " <>
                "(it is built into synapse_core's priv/bin by `mix compile`)"
            )
    end

    :ok
  end

  @impl true
  def handle_call(:stop, from, state) do
    {:noreply, state} = handle_cast(:stop, state)
    {:noreply, %{state | stoppers: [from | state.stoppers]}}
  end

  def handle_call(:os_pid, _from, state), do: {:reply, state.shepherd_os_pid, state}

  @impl true
  def handle_cast(:stop, state) do
    command(state, Protocol.encode_stop())
    {:noreply, await_end(state, state.grace + @stop_slack)}
  end

  def handle_cast(:kill, state) do
    command(state, Protocol.encode_signal(9))
    {:noreply, await_end(state, @confirm_timeout)}
  end

  def handle_cast({:signal, signal}, state) do
    command(state, Protocol.encode_signal(signal))
    {:noreply, state}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    frame = Protocol.decode(data)
    state = if Protocol.output?(frame), do: ack(state), else: state
    handle_frame(frame, state)
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    finish(state, nil, "synapse-shepherd exited with status #{status} before its worker")
  end

  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    finish(state, nil, "the port of synapse-shepherd closed (#{inspect(reason)})")
  end

  def handle_info({:EXIT, _other, _reason}, state), do: {:noreply, state}

  def handle_info(:confirm_timeout, state) do
    finish(state, nil, "synapse-shepherd did not confirm the worker's end")
  end

  def handle_info(:flush_dropped, state), do: {:noreply, %{state | log: Log.flush(state.log)}}

  defp handle_frame({:spawned, os_pid}, state) do
    Logger.metadata(worker_os_pid: os_pid)
    report(state, {:spawned, os_pid})
    {:noreply, %{state | os_pid: os_pid}}
  end

  defp handle_frame({:ready, address}, state) do
    report(state, {:ready, address})
    {:noreply, state}
  end

  defp handle_frame({stream, _line} = frame, state) when stream in [:stdout, :stderr, :log] do
    case Log.handle(state.log, frame) do
      {nil, log} ->
        {:noreply, %{state | log: log}}

      {:schedule_flush, log} ->
        Process.send_after(self(), :flush_dropped, 1_000)
        {:noreply, %{state | log: log}}

      {{:status, status}, log} ->
        report(state, {:status, status})
        {:noreply, %{state | log: log}}
    end
  end

  defp handle_frame({:spawn_failed, message}, state) do
    Logger.error("cannot start the Python worker: " <> message)
    {:noreply, %{state | log: Log.keep(state.log, message)}}
  end

  defp handle_frame({:exited, status}, state) do
    finish(state, status, "the worker #{Protocol.describe_exit(status)}")
  end

  defp handle_frame({:unknown, frame}, state) do
    Logger.warning("unexpected frame from synapse-shepherd: #{inspect(frame, limit: 50)}")
    {:noreply, state}
  end

  defp ack(%{unacked: unacked} = state) when unacked + 1 >= @ack_every do
    command(state, Protocol.encode_ack(unacked + 1))
    %{state | unacked: 0}
  end

  defp ack(state), do: %{state | unacked: state.unacked + 1}

  defp await_end(%{confirm_timer: nil} = state, timeout) do
    %{state | confirm_timer: Process.send_after(self(), :confirm_timeout, timeout)}
  end

  defp await_end(state, _timeout), do: state

  # The owner (this process's parent) is gone, or this process was told to
  # go: nobody will stop the worker but this process, now. A graceful stop,
  # waited for here, or the kill.
  @impl true
  def terminate(_reason, %{port: port} = state) when port != nil do
    command(state, Protocol.encode_stop())
    deadline = System.monotonic_time(:millisecond) + state.grace + @stop_slack
    status = await_exit(state, deadline)
    finish(%{state | owner: nil}, status, "stopped")
  end

  def terminate(_reason, _state), do: :ok

  defp await_exit(%{port: port} = state, deadline) do
    receive do
      {^port, {:data, data}} ->
        case Protocol.decode(data) do
          {:exited, status} ->
            status

          frame ->
            if Protocol.output?(frame), do: command(state, Protocol.encode_ack(1))
            await_exit(state, deadline)
        end

      {^port, {:exit_status, _}} ->
        nil
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> nil
    end
  end

  # The worker is gone, or this process makes sure it is: without the
  # shepherd's confirmation, its group and the shepherd are killed here, and
  # this returns once they are dead.
  defp finish(state, status, message) do
    if status == nil do
      # Every descendant, taken while the tree still holds them (the kills
      # break it): the group's kill misses a subprocess that left it (a
      # session of its own, as an MCP stdio server has).
      escaped = descendants([state.shepherd_os_pid | List.wrap(state.os_pid)])
      Native.shepherd_kill(state.shepherd_os_pid, false)
      kill_group(state.os_pid)
      Enum.each(escaped, &kill_same/1)
      await_dead(state.os_pid, [state.shepherd_os_pid | Enum.map(escaped, &elem(&1, 0))])
    end

    close(state.port)
    # The shepherd removes it once the worker is gone, unless it is gone too.
    if state.cleanup, do: File.rm_rf(state.cleanup)
    log = Log.flush(state.log)
    report(state, {:exited, %{status: status, message: message, output: Log.tail(log)}})
    Enum.each(state.stoppers, &GenServer.reply(&1, :ok))
    {:stop, :normal, %{state | port: nil, log: log, stoppers: []}}
  end

  # SIGKILL is not instant: wait (a little) until no process of the group,
  # nor the shepherd or a descendant killed apart, is still running
  # (zombies do not count).
  @dead_poll 10
  @dead_limit 1_000

  defp await_dead(pgid, os_pids) do
    await_dead(pgid, os_pids, System.monotonic_time(:millisecond) + @dead_limit)
  end

  defp await_dead(pgid, os_pids, deadline) do
    cond do
      not Enum.any?(os_pids, &running?/1) and group_running(pgid) == [] ->
        :ok

      System.monotonic_time(:millisecond) >= deadline ->
        :ok

      true ->
        Process.sleep(@dead_poll)
        await_dead(pgid, os_pids, deadline)
    end
  end

  # The processes below `roots` (ppid links, whatever their group or
  # session), each with its start time: {os_pid, starttime}.
  defp descendants(roots) do
    table = process_table()
    children = Enum.group_by(table, fn {_pid, ppid, _start} -> ppid end)
    walk(Enum.map(roots, &Integer.to_string/1), children, [])
  end

  defp walk([], _children, found), do: found

  defp walk([pid | rest], children, found) do
    below = for {child, _ppid, start} <- Map.get(children, pid, []), do: {child, start}
    walk(Enum.map(below, &elem(&1, 0)) ++ rest, children, below ++ found)
  end

  # {pid, ppid, starttime} of every live process, from /proc.
  defp process_table do
    case File.ls("/proc") do
      {:ok, entries} ->
        for entry <- entries,
            entry =~ ~r/^\d+$/,
            {:ok, stat} <- [File.read("/proc/#{entry}/stat")],
            [state, ppid | _] = fields <- [stat_fields(stat)],
            state not in ["Z", "X"],
            do: {entry, ppid, Enum.at(fields, 19)}

      {:error, _} ->
        []
    end
  end

  # SIGKILL to a process taken from /proc, unless its pid now names another
  # process (a different start time).
  defp kill_same({os_pid, start}) do
    with {:ok, stat} <- File.read("/proc/#{os_pid}/stat"),
         ^start <- Enum.at(stat_fields(stat), 19) do
      Native.shepherd_kill(String.to_integer(os_pid), false)
    end

    :ok
  end

  # From /proc where there is one; elsewhere the kill is trusted.
  defp running?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> hd(stat_fields(stat)) not in ["Z", "X"]
      {:error, _} -> false
    end
  end

  defp group_running(nil), do: []

  defp group_running(pgid) do
    pgid = Integer.to_string(pgid)

    case File.ls("/proc") do
      {:ok, entries} ->
        for entry <- entries,
            entry =~ ~r/^\d+$/,
            {:ok, stat} <- [File.read("/proc/#{entry}/stat")],
            [state, _ppid, ^pgid | _] <- [stat_fields(stat)],
            state not in ["Z", "X"],
            do: entry

      {:error, _} ->
        []
    end
  end

  # The fields after the command name, which is in parentheses and may
  # contain anything: state, ppid, pgrp, ...
  defp stat_fields(stat) do
    stat |> :binary.split(") ", [:global]) |> List.last() |> String.split(" ")
  end

  defp report(%{owner: nil}, _event), do: :ok
  defp report(%{owner: owner}, event), do: send(owner, {:shepherd, self(), event})

  defp command(state, frame) do
    Port.command(state.port, frame)
  rescue
    # The port is closing: its exit_status report comes next.
    ArgumentError -> :ok
  end

  defp close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end
end
