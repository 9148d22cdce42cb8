defmodule SynapseCore do
  @moduledoc """
  Synapse runs pydantic-ai agents in supervised Python worker processes and
  lets any BEAM process call them.

  `SynapseCore.Agent` is the API; this module starts and stops agents under
  Synapse's own supervisor, for agents that are not part of your tree.
  """

  alias SynapseCore.{Agent, AgentSupervisor, Error}

  @doc """
  Starts an agent under Synapse's supervisor. Takes the options of
  `SynapseCore.Agent.start_link/1`.
  """
  @spec start_agent([Agent.option()]) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_agent(opts) do
    spec = Agent.child_spec(opts) |> Map.put(:restart, :transient)

    SynapseCore.AgentsSupervisor
    |> DynamicSupervisor.start_child(spec)
    |> Agent.unwrap_start_error()
  end

  @doc """
  Stops an agent started with `start_agent/1`. Returns once its workers have
  exited.
  """
  @spec stop_agent(Agent.name()) :: :ok | {:error, Error.t()}
  def stop_agent(name) do
    with [{pid, _}] <- Registry.lookup(SynapseCore.AgentRegistry, name),
         :ok <- DynamicSupervisor.terminate_child(SynapseCore.AgentsSupervisor, pid) do
      :ok
    else
      [] ->
        {:error, Error.new(:unknown_agent, "no agent named #{inspect(name)} is running")}

      {:error, :not_found} ->
        {:error,
         Error.new(:invalid_argument, "agent #{inspect(name)} was not started with start_agent/1")}
    end
  end

  @doc false
  def via(name), do: AgentSupervisor.via(name)
end
