defmodule SynapseCore.Application do
  @moduledoc false

  use Application

  @impl true
  def start(_type, _args) do
    SynapseCore.Telemetry.load()
    SynapseCore.TraceContext.load()

    children = [
      # Agent name -> the agent's supervisor (one entry per agent).
      {Registry, keys: :unique, name: SynapseCore.AgentRegistry},
      # Agent name -> the channel of each of its workers that is ready. Read
      # by every call; one partition, since a duplicate-key lookup reads
      # every partition.
      {Registry, keys: :duplicate, name: SynapseCore.WorkerRegistry},
      # The cluster-wide groups of serving workers, for calls from other nodes.
      %{id: :pg, start: {:pg, :start_link, [SynapseCore.PG]}},
      # Tool runners (each links the processes of its calls), fan-outs,
      # relays of remote runs.
      {Task.Supervisor, name: SynapseCore.ToolSupervisor},
      # Agents started with SynapseCore.start_agent/1.
      {DynamicSupervisor, strategy: :one_for_one, name: SynapseCore.AgentsSupervisor}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: SynapseCore.Supervisor)
  end

  @doc """
  `:ok` when the application runs; otherwise the error every call answers,
  saying so (rather than the `unknown registry` its registries' absence
  would raise).
  """
  @spec check_started() :: :ok | {:error, SynapseCore.Error.t()}
  def check_started do
    if Process.whereis(SynapseCore.Supervisor) do
      :ok
    else
      {:error,
       SynapseCore.Error.new(
         :unavailable,
         "the :synapse_core application is not started: list it in your mix.exs " <>
           "dependencies (it then starts before your application) or call " <>
           "Application.ensure_all_started(:synapse_core)"
       )}
    end
  end
end
