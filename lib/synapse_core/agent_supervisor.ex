defmodule SynapseCore.AgentSupervisor do
  @moduledoc false
  # The supervisor of one agent: its workers (one `SynapseCore.AgentProcess`
  # each), registered under the agent's name in `SynapseCore.AgentRegistry`.

  use Supervisor

  alias SynapseCore.{Agent.Options, AgentProcess}

  @spec start_link(Options.t()) :: Supervisor.on_start()
  def start_link(%Options{} = options) do
    Supervisor.start_link(__MODULE__, options, name: via(options.name))
  end

  @spec via(term()) :: {:via, Registry, {SynapseCore.AgentRegistry, term()}}
  def via(name), do: {:via, Registry, {SynapseCore.AgentRegistry, name}}

  @impl true
  def init(%Options{workers: workers, remote: remote} = options) do
    local = for index <- 0..(workers - 1)//1, do: {AgentProcess, {options, index, :local}}

    attached =
      for {address, offset} <- Enum.with_index(remote),
          do: {AgentProcess, {options, workers + offset, {:remote, address}}}

    Supervisor.init(local ++ attached, strategy: :one_for_one)
  end
end
