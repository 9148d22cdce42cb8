defmodule SynapseCore do
  @moduledoc """
  Synapse runs pydantic-ai agents in supervised Python worker processes and
  lets any BEAM process call them.

  `SynapseCore.Agent` is the API; this module starts and stops agents under
  Synapse's own supervisor, for agents that are not part of your tree.
  """

  alias SynapseCore.{Agent, AgentSupervisor, Error}
  alias SynapseCore.Agent.Options

  @doc """
  Starts an agent under Synapse's supervisor. Takes the options of
  `SynapseCore.Agent.start_link/1`.
  """
  @spec start_agent([Agent.option()]) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_agent(opts) do
    options = Options.agent!(opts)

    with :ok <- SynapseCore.Application.check_started() do
      start_validated(options)
    end
  end

  defp start_validated(options) do
    ready_to = if options.await_ready, do: AgentSupervisor.ready_to(options)

    spec = %{
      id: {Agent, options.name},
      start: {AgentSupervisor, :start_link, [options, ready_to]},
      type: :supervisor,
      restart: :transient
    }

    # The supervisor returns once the agent's processes exist; the workers
    # start in parallel and are awaited here, outside it, so that agents
    # started together start together.
    case SynapseCore.AgentsSupervisor
         |> DynamicSupervisor.start_child(spec)
         |> Agent.unwrap_start_error() do
      {:ok, pid} ->
        case ready_to && AgentSupervisor.await_started(pid, options, ready_to) do
          result when result in [nil, :ok] ->
            {:ok, pid}

          {:error, error} ->
            DynamicSupervisor.terminate_child(SynapseCore.AgentsSupervisor, pid)
            {:error, error}
        end

      {:error, error} ->
        AgentSupervisor.forget(ready_to)
        {:error, error}
    end
  end

  @doc """
  Waits until every worker of the agents (or bridges) `names` has started:
  `:ok` once they serve, or the first error (a worker whose first start
  failed). For agents started with `await_ready: false`; in a supervision
  tree, `SynapseCore.AwaitReady` does this as a child.

  Each worker has its agent's `:startup_timeout` to start; `timeout` bounds
  the whole wait on top of that (default `:infinity`). Raises
  `ArgumentError` for a `timeout` that is not one, and for names given as
  an improper list.
  """
  @spec await_ready(Agent.name() | [Agent.name()], timeout()) :: :ok | {:error, Error.t()}
  def await_ready(names, timeout \\ :infinity)

  def await_ready(names, timeout) when is_list(names) do
    timeout = SynapseCore.Options.timeout!(timeout, "await_ready/2")

    if List.improper?(names),
      do: raise(ArgumentError, "expected a name or a list of names, got an improper list")

    Enum.reduce_while(names, :ok, fn name, :ok ->
      case await_one(name, timeout) do
        :ok -> {:cont, :ok}
        {:error, error} -> {:halt, {:error, error}}
      end
    end)
  end

  def await_ready(name, timeout), do: await_ready([name], timeout)

  defp await_one(name, timeout) do
    case Registry.lookup(SynapseCore.AgentRegistry, name) do
      [{supervisor, _}] ->
        AgentSupervisor.await_ready(supervisor, timeout)

      [] ->
        {:error,
         Error.new(:unknown_agent, "no agent or bridge named #{inspect(name)} is running")}
    end
  end

  @doc """
  Stops an agent started with `start_agent/1`. Returns once its workers have
  exited.
  """
  @spec stop_agent(Agent.name()) :: :ok | {:error, Error.t()}
  def stop_agent(name) do
    with :ok <- SynapseCore.Application.check_started(),
         [{pid, _}] <- Registry.lookup(SynapseCore.AgentRegistry, name) do
      case DynamicSupervisor.terminate_child(SynapseCore.AgentsSupervisor, pid) do
        :ok ->
          :ok

        # The registry forgets a process a moment after it exits: an agent
        # that has just stopped (or crashed) is not one started elsewhere.
        {:error, :not_found} ->
          if Process.alive?(pid),
            do:
              {:error,
               Error.new(
                 :invalid_argument,
                 "agent #{inspect(name)} was not started with start_agent/1"
               )},
            else: {:error, not_running(name)}
      end
    else
      [] -> {:error, not_running(name)}
      {:error, %Error{} = error} -> {:error, error}
    end
  end

  defp not_running(name),
    do: Error.new(:unknown_agent, "no agent named #{inspect(name)} is running")

  @doc false
  def via(name), do: AgentSupervisor.via(name)
end
