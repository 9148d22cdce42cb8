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

  @doc """
  Waits for the first start of every local worker: `:ok`, or the first
  worker's start-up error. Remote workers are attached in the background
  and not waited for.
  """
  @spec await_ready(pid(), timeout()) :: :ok | {:error, SynapseCore.Error.t()}
  def await_ready(supervisor, timeout) do
    supervisor
    |> Supervisor.which_children()
    |> Enum.filter(fn {{AgentProcess, _}, pid, _, _} -> is_pid(pid) end)
    |> Enum.map(fn {_, pid, _, _} -> pid end)
    |> Enum.filter(&(AgentProcess.info(&1).location == :local))
    |> Enum.reduce_while(:ok, fn pid, :ok ->
      case AgentProcess.await_ready(pid, timeout) do
        :ok -> {:cont, :ok}
        {:error, error} -> {:halt, {:error, error}}
      end
    end)
  end

  @doc """
  Starts an agent's supervisor and returns once its workers serve; stops it
  again and returns the error if one cannot start.
  """
  @spec start_and_await(Options.t()) :: {:ok, pid()} | {:error, term()}
  def start_and_await(%Options{} = options) do
    with {:ok, supervisor} <- start_link(options) do
      case await_ready(supervisor, options.startup_timeout + 5_000) do
        :ok ->
          {:ok, supervisor}

        {:error, error} ->
          Supervisor.stop(supervisor, :normal)
          {:error, error}
      end
    end
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
