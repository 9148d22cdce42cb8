defmodule SynapseCore.AgentSupervisor do
  @moduledoc false
  # The supervisor of one agent (or bridge): its workers (one
  # `SynapseCore.Worker` each), registered under the agent's name in
  # `SynapseCore.AgentRegistry`.
  #
  # The workers start in parallel, after the supervisor's own start: a
  # starter that waits for them (`start_and_await/1`, `await_started/3`)
  # gives them an alias to report their first start's outcome to, and
  # waits outside the supervisor, so that agents started together (several
  # `start_agent/1` calls, a tree of agents with `await_ready: false`) start
  # together.

  use Supervisor

  alias SynapseCore.{Agent.Options, Error, Worker}

  @spec start_link(Options.t(), Worker.ready_to()) :: Supervisor.on_start()
  def start_link(%Options{} = options, ready_to \\ nil) do
    Supervisor.start_link(__MODULE__, {options, ready_to}, name: via(options.name))
  end

  @doc """
  Starts an agent's supervisor and, with `await_ready: true`, returns once
  its workers serve; stops it again and returns the error if one cannot
  start.
  """
  @spec start_and_await(Options.t()) :: {:ok, pid()} | {:error, term()}
  def start_and_await(%Options{await_ready: false} = options), do: start_link(options)

  def start_and_await(%Options{} = options) do
    ready_to = ready_to(options)

    case start_link(options, ready_to) do
      {:ok, supervisor} ->
        case await_started(supervisor, options, ready_to) do
          :ok ->
            {:ok, supervisor}

          {:error, error} ->
            # Unlinked first: the caller must not get the supervisor's exit.
            Process.unlink(supervisor)
            stop(supervisor)
            {:error, error}
        end

      {:error, reason} ->
        forget(ready_to)
        {:error, reason}
    end
  end

  @doc """
  Where workers report their first start to the calling starter, and until
  when: a worker that starts later (restarted after a crash) reports to
  nobody.
  """
  @spec ready_to(Options.t()) :: Worker.ready_to()
  def ready_to(%Options{} = options) do
    deadline = System.monotonic_time(:millisecond) + options.startup_timeout + 5_000
    {:erlang.alias(), self(), deadline}
  end

  @doc "Stops listening to `ready_to`: later reports are dropped."
  @spec forget(Worker.ready_to()) :: :ok
  def forget(nil), do: :ok

  def forget({alias, _starter, _deadline}) do
    :erlang.unalias(alias)
    :ok
  end

  @doc """
  Waits for the first start of every worker of `supervisor`, which was
  given `ready_to`: `:ok`, or the first error. The supervisor stopping
  meanwhile (`SynapseCore.stop_agent/1`) is an error too, not an exit.

  Each worker is awaited by its index, not counted: a worker whose process
  is restarted during the start (it crashed) is given the same `ready_to`
  and reports again, and its two reports are one worker's.
  """
  @spec await_started(pid(), Options.t(), Worker.ready_to()) :: :ok | {:error, Error.t()}
  def await_started(supervisor, %Options{} = options, {alias, _starter, deadline} = ready_to) do
    monitor = Process.monitor(supervisor)
    # The indexes `init/1` gives the workers: local ones, then remote ones.
    waiting = MapSet.new(0..(options.workers + length(options.remote) - 1)//1)

    try do
      collect(alias, monitor, waiting, deadline)
    after
      forget(ready_to)
      Process.demonitor(monitor, [:flush])
    end
  end

  defp collect(alias, monitor, waiting, deadline) do
    if MapSet.size(waiting) == 0,
      do: :ok,
      else: receive_report(alias, monitor, waiting, deadline)
  end

  defp receive_report(alias, monitor, waiting, deadline) do
    receive do
      {^alias, index, :ok} ->
        collect(alias, monitor, MapSet.delete(waiting, index), deadline)

      {^alias, _index, {:error, %Error{} = error}} ->
        {:error, error}

      {:DOWN, ^monitor, :process, _, _reason} ->
        {:error, Error.new(:cancelled, "the agent was stopped while it was starting")}
    after
      max(deadline - System.monotonic_time(:millisecond), 0) ->
        {:error, Error.new(:startup_failed, "the agent's workers did not report their start")}
    end
  end

  @doc """
  Waits until every worker of the agent `supervisor` has started (see
  `SynapseCore.Worker.await_ready/2`): `:ok` or the first error.
  """
  @spec await_ready(pid(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(supervisor, timeout) do
    supervisor
    |> workers()
    |> Enum.reduce_while(:ok, fn pid, :ok ->
      case Worker.await_ready(pid, timeout) do
        :ok -> {:cont, :ok}
        {:error, error} -> {:halt, {:error, error}}
      end
    end)
  catch
    :exit, _ -> {:error, Error.new(:cancelled, "the agent was stopped while it was starting")}
  end

  defp workers(supervisor) do
    for {{Worker, _}, pid, _, _} <- Supervisor.which_children(supervisor), is_pid(pid), do: pid
  end

  defp stop(supervisor) do
    Supervisor.stop(supervisor, :normal)
  catch
    # It stopped by itself meanwhile.
    :exit, _ -> :ok
  end

  @spec via(term()) :: {:via, Registry, {SynapseCore.AgentRegistry, term()}}
  def via(name), do: {:via, Registry, {SynapseCore.AgentRegistry, name}}

  @impl true
  def init({%Options{workers: workers, remote: remote} = options, ready_to}) do
    local = for index <- 0..(workers - 1)//1, do: {options, index, :local, ready_to}

    attached =
      for {address, offset} <- Enum.with_index(remote),
          do: {options, workers + offset, {:remote, address}, ready_to}

    children = Enum.map(local ++ attached, &Worker.child_spec/1)

    # Built by hand: Supervisor.init/2 of Elixir 1.14 knows neither
    # :auto_shutdown nor :significant. A worker that exits {:shutdown, _}
    # (a failed first start nobody collects) takes its agent down.
    {:ok,
     {%{strategy: :one_for_one, intensity: 3, period: 5, auto_shutdown: :any_significant},
      children}}
  end
end
