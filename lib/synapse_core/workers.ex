defmodule SynapseCore.Workers do
  @moduledoc false
  # The ready workers of agents and bridges, as registered by their
  # AgentProcess in SynapseCore.WorkerRegistry: what every call reads to
  # find a channel.

  alias SynapseCore.{AgentProcess, Error}

  @typedoc "A registry entry: the worker's channel and the agent's tools."
  @type worker :: %{channel: SynapseCore.Channel.t(), tools: [SynapseCore.Tool.t()]}

  @spec pick(term()) :: {:ok, worker()} | {:error, Error.t()}
  def pick(name) do
    case Registry.lookup(SynapseCore.WorkerRegistry, name) do
      [{_pid, worker}] ->
        {:ok, worker}

      [_ | _] = workers ->
        {_pid, worker} = Enum.random(workers)
        {:ok, worker}

      [] ->
        if Registry.lookup(SynapseCore.AgentRegistry, name) == [] do
          {:error,
           Error.new(:unknown_agent, "no agent or bridge named #{inspect(name)} is running")}
        else
          {:error,
           Error.new(
             :unavailable,
             "#{inspect(name)} has no worker ready (it is starting or restarting)"
           )}
        end
    end
  end

  @spec list(term()) :: [%{pid: pid(), os_pid: pos_integer(), address: String.t()}]
  def list(name) do
    for {pid, _value} <- Registry.lookup(SynapseCore.WorkerRegistry, name),
        # A worker being replaced has no OS pid; it is not ready.
        %{os_pid: os_pid} = info when os_pid != nil <- [safe_info(pid)],
        do: info |> Map.put(:pid, pid) |> Map.delete(:agent)
  end

  defp safe_info(pid) do
    AgentProcess.info(pid)
  catch
    :exit, _ -> nil
  end
end
