defmodule SynapseCore.Probe do
  @moduledoc """
  Round trips to an agent's (or a bridge's) worker with no model in them:
  the cost of the path itself (Elixir, the NIF, the transport, the Python
  worker's event loop), for health probes and benchmarks. The worker
  answers them with its `synapse.v1.ProbeService`.
  """

  alias SynapseCore.{Error, Native, Run, Workers}

  @doc """
  Sends `payload` to one of `name`'s workers, which sends it back.

      {:ok, "ping"} = SynapseCore.Probe.echo(:support, "ping")

  Options: `:timeout` (milliseconds, default `5_000`).
  """
  @spec echo(term(), binary(), keyword()) :: {:ok, binary()} | {:error, Error.t()}
  def echo(name, payload, opts \\ []) when is_binary(payload) do
    opts = Keyword.validate!(opts, timeout: 5_000)

    with {:ok, worker} <- Workers.pick_local(name) do
      Run.unary(name, opts[:timeout], fn ref ->
        Native.probe_echo(worker.channel.resource, ref, payload, opts[:timeout])
      end)
    end
  end

  @doc """
  A lazy stream of `count` copies of `payload`, sent by one of `name`'s
  workers as fast as the stream is consumed (at most `:window` ahead).

  Options: `:timeout` (for the whole stream, default `60_000`), `:window`
  (default `64`).
  """
  @spec echo_stream(term(), binary(), non_neg_integer(), keyword()) :: Enumerable.t()
  def echo_stream(name, payload, count, opts \\ []) when is_binary(payload) do
    opts = Keyword.validate!(opts, timeout: 60_000, window: 64)

    Run.stream_call(name, opts, fn ref ->
      with {:ok, worker} <- Workers.pick_local(name) do
        resource = worker.channel.resource
        Native.probe_echo_stream(resource, ref, payload, count, opts[:timeout], opts[:window])
      end
    end)
  end
end
