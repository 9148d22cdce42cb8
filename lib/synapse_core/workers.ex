defmodule SynapseCore.Workers do
  @moduledoc false
  # The ready workers of agents and bridges, as registered by their
  # AgentProcess in SynapseCore.WorkerRegistry: what every call reads to
  # find a channel.

  alias SynapseCore.{AgentProcess, Error, Native}

  @typedoc "A registry entry: the worker's channel and the agent's tools."
  @type worker :: %{channel: SynapseCore.Channel.t(), tools: [SynapseCore.Tool.t()]}

  @doc """
  A worker for a call to `name`: one of this node's, the least loaded of
  two; if this node has none ready, `{:remote, node}` for a connected node
  that has (from the `:pg` group the workers join).
  """
  @spec pick(term()) :: {:ok, worker() | {:remote, node()}} | {:error, Error.t()}
  def pick(name) do
    case pick_local(name) do
      {:ok, worker} ->
        {:ok, worker}

      {:error, error} ->
        case remote_nodes(name) do
          [] -> {:error, error}
          nodes -> {:ok, {:remote, Enum.random(nodes)}}
        end
    end
  end

  @doc "The `:pg` group of the serving workers of `name`, across the cluster."
  @spec group(term()) :: {:synapse_worker, term()}
  def group(name), do: {:synapse_worker, name}

  defp remote_nodes(name) do
    SynapseCore.PG
    |> :pg.get_members(group(name))
    |> Enum.map(&node/1)
    |> Enum.reject(&(&1 == node()))
    |> Enum.uniq()
  end

  @spec pick_local(term()) :: {:ok, worker()} | {:error, Error.t()}
  def pick_local(name) do
    case Registry.lookup(SynapseCore.WorkerRegistry, name) do
      [{_pid, worker}] ->
        {:ok, worker}

      [_ | _] = workers ->
        {:ok, least_loaded(workers)}

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

  # Power of two choices: of two workers drawn at random, the one with fewer
  # calls in flight. Nearly as good as the least loaded of all, without
  # reading every worker's count on every call.
  defp least_loaded(workers) do
    [{_, a}, {_, b}] = Enum.take_random(workers, 2)

    if Native.channel_load(a.channel.resource) <= Native.channel_load(b.channel.resource),
      do: a,
      else: b
  end

  @spec list(term()) :: [
          %{pid: pid(), os_pid: pos_integer() | nil, address: String.t(), location: term()}
        ]
  def list(name) do
    for {pid, _value} <- Registry.lookup(SynapseCore.WorkerRegistry, name),
        # A worker being replaced is still registered for a moment.
        %{serving: true} = info <- [safe_info(pid)],
        do: info |> Map.put(:pid, pid) |> Map.drop([:agent, :serving])
  end

  defp safe_info(pid) do
    AgentProcess.info(pid)
  catch
    :exit, _ -> nil
  end
end
