defmodule SynapseCore.Workers do
  @moduledoc false
  # The ready workers of agents and bridges, as registered by their
  # SynapseCore.Worker in SynapseCore.WorkerRegistry: what every call reads
  # to find a channel. A worker that is not ready registers why instead
  # (under {:down, name}), so that a call answers the cause.

  alias SynapseCore.{Error, Native, Worker}
  alias SynapseCore.Worker.Failure

  @typedoc """
  A registry entry: the worker's channel, the agent's tools (and their
  definitions as runs send them, `SynapseCore.Tool.definition/1`) and the
  worker's index.
  """
  @type worker :: %{
          channel: SynapseCore.Channel.t(),
          tools: [SynapseCore.Tool.t()],
          tool_definitions: [map()],
          index: non_neg_integer(),
          pid: pid()
        }

  @doc """
  A worker for a call to `name` by the calling process: one of this
  node's, as `pick_local/2` chooses; if this node has none ready,
  `{:remote, node}` for a connected node that has (from the `:pg` group
  the workers join).
  """
  @spec pick(term()) :: {:ok, worker() | {:remote, node()}} | {:error, Error.t()}
  def pick(name) do
    case pick_local(name) do
      {:ok, worker} ->
        {:ok, worker}

      {:error, error} ->
        case pick_remote(name) do
          nil -> {:error, error}
          node -> {:ok, {:remote, node}}
        end
    end
  end

  @doc """
  A connected node, other than this one and those in `tried`, that has a
  worker of `name` serving (as the `:pg` group says), drawn at random; nil
  if there is none.
  """
  @spec pick_remote(term(), [node()]) :: node() | nil
  def pick_remote(name, tried \\ []) do
    case remote_nodes(name) -- tried do
      [] -> nil
      nodes -> Enum.random(nodes)
    end
  end

  @doc """
  Registers the calling worker's channel under the name of its `options`
  (`SynapseCore.Agent.Options`): it serves, on this node and, through
  `:pg`, to the cluster.
  """
  @spec join(SynapseCore.Agent.Options.t(), SynapseCore.Channel.t(), non_neg_integer()) :: :ok
  def join(%{name: name} = options, channel, index) do
    Registry.unregister(SynapseCore.WorkerRegistry, down_key(name))

    worker = %{
      channel: channel,
      tools: options.tools,
      tool_definitions: options.tool_definitions,
      index: index,
      pid: self()
    }

    {:ok, _} = Registry.register(SynapseCore.WorkerRegistry, name, worker)

    :ok = :pg.join(SynapseCore.PG, group(name), self())
  end

  @doc "Unregisters the calling worker: it gets no new calls."
  @spec leave(term()) :: :ok
  def leave(name) do
    Registry.unregister(SynapseCore.WorkerRegistry, name)
    :pg.leave(SynapseCore.PG, group(name), self())
    :ok
  end

  @doc "Unregisters the calling worker, and records why it does not serve."
  @spec down(term(), Error.t()) :: :ok
  def down(name, %Error{} = error) do
    leave(name)
    Registry.unregister(SynapseCore.WorkerRegistry, down_key(name))
    {:ok, _} = Registry.register(SynapseCore.WorkerRegistry, down_key(name), error)
    :ok
  end

  defp down_key(name), do: {__MODULE__, :down, name}

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

  @doc """
  A worker of this node for a call to `name` by `caller` (the calling
  process, or the caller on another node whose call a relay makes here):
  the less loaded of the caller's own and one drawn at random.
  """
  @spec pick_local(term(), pid()) :: {:ok, worker()} | {:error, Error.t()}
  def pick_local(name, caller \\ self()) do
    case lookup(name) do
      [{_pid, worker}] ->
        {:ok, worker}

      [_ | _] = workers ->
        {:ok, least_loaded(workers, caller)}

      {:error, error} ->
        {:error, error}

      [] ->
        if Registry.lookup(SynapseCore.AgentRegistry, name) == [] do
          {:error,
           Error.new(:unknown_agent, "no agent or bridge named #{inspect(name)} is running")}
        else
          {:error, not_ready(name)}
        end
    end
  end

  # The registry raises when the application is not started: the check
  # costs nothing on the path of a call that finds its worker.
  defp lookup(name) do
    Registry.lookup(SynapseCore.WorkerRegistry, name)
  rescue
    error in ArgumentError ->
      with :ok <- SynapseCore.Application.check_started(), do: reraise(error, __STACKTRACE__)
  end

  # No worker serves: the cause, when retrying cannot fix it (a refused
  # token, a module that does not load, ...), else :unavailable.
  defp not_ready(name) do
    causes =
      for {_pid, error} <- Registry.lookup(SynapseCore.WorkerRegistry, down_key(name)), do: error

    case Enum.find(causes, &Failure.permanent?/1) do
      %Error{} = cause ->
        cause

      nil ->
        Error.new(
          :unavailable,
          "#{inspect(name)} has no worker ready (it is starting or restarting)",
          if(causes == [], do: %{}, else: %{last_error: hd(causes)})
        )
    end
  end

  # Power of two choices on the calls in flight, one of the two being the
  # calling process's own worker (drawn from its pid: for a call relayed
  # from another node, the pid of the caller there, not of its relay, a
  # new process per call), the other drawn at random; the caller's own one
  # wins a tie. A process making its calls one after the other keeps them
  # on one worker, which stays awake and warm for the next (were they
  # spread at random, every worker would sleep between its calls and pay
  # to be woken for each), while the calls of many processes spread as
  # before, a burst of them included (a choice made from the loads alone,
  # ties going to one worker, would send it a burst whose callers all pick
  # before any has started its call).
  defp least_loaded(workers, caller) do
    count = length(workers)
    own = :erlang.phash2(caller, count)
    other = rem(own + :rand.uniform(count - 1), count)
    {_, mine} = Enum.at(workers, own)
    {_, drawn} = Enum.at(workers, other)
    if load(mine) <= load(drawn), do: mine, else: drawn
  end

  defp load(worker), do: Native.channel_load(worker.channel.resource)

  @spec list(term()) :: [
          %{
            pid: pid(),
            os_pid: pos_integer() | nil,
            address: String.t(),
            location: term(),
            stuck_threads: non_neg_integer() | nil
          }
        ]
  def list(name) do
    for {pid, _value} <- Registry.lookup(SynapseCore.WorkerRegistry, name),
        # A worker being replaced is still registered for a moment.
        %{serving: true} = info <- [safe_info(pid)],
        do: info |> Map.put(:pid, pid) |> Map.drop([:agent, :serving, :state])
  end

  defp safe_info(pid) do
    Worker.info(pid)
  catch
    :exit, _ -> nil
  end
end
