defmodule SynapseCore.Remote do
  @moduledoc false
  # Runs on an agent of another node. Workers join a `:pg` group per agent
  # name when they serve; a caller whose node has no ready worker for the
  # name starts the run through a relay on a node that has one.
  #
  # The relay (a process on that node, under SynapseCore.ToolSupervisor)
  # owns the run there and forwards its messages, unchanged but for the tag,
  # to the caller's receiver: the caller awaits, streams and cancels exactly
  # as for a local run. The relay monitors the caller and the receiver (either
  # exiting cancels the run); the caller monitors the relay (the node going
  # down ends the run with :worker_exited). Stream credit goes end to end:
  # the consumer's acknowledgements travel to the relay, which passes them
  # to the NIF. Tools given by the caller run on the caller's node: the
  # relay's node calls back for each tool call.

  alias SynapseCore.{Agent, Error, Native, Run, Tool}

  @start_timeout 15_000

  @spec start(
          node(),
          term(),
          String.t(),
          map(),
          :sync | :unary | :stream,
          pid(),
          pos_integer() | :infinity
        ) :: {:ok, Run.t()} | {:error, Error.t()}
  def start(node, name, prompt, call, reply, receiver, window) do
    ref = make_ref()
    call = %{call | tools: Enum.map(call.tools, &call_back(&1, node()))}
    args = [receiver, self(), ref, name, prompt, call, reply, window]

    case :erpc.call(node, __MODULE__, :start_relay, args, @start_timeout) do
      {:ok, relay} ->
        {:ok,
         %Run{
           ref: ref,
           handle: nil,
           relay: relay,
           monitor: Process.monitor(relay),
           agent: name,
           owner: self(),
           receiver: if(reply == :stream, do: receiver),
           timeout: call.timeout
         }}

      {:error, %Error{} = error} ->
        {:error, error}
    end
  catch
    :error, {:erpc, reason} ->
      {:error, Error.new(:unavailable, "node #{node} cannot be reached: #{inspect(reason)}")}

    :exit, reason ->
      {:error, Error.new(:unavailable, "node #{node} cannot be reached: #{inspect(reason)}")}
  end

  # The tool's function, called from the relay's node, runs on `origin`.
  defp call_back(%Tool{function: function, timeout: timeout} = tool, origin) do
    %{
      tool
      | function: fn args, context ->
          :erpc.call(origin, __MODULE__, :run_tool, [function, args, context], timeout)
        end
    }
  end

  @doc false
  def run_tool(function, args, _context) when is_function(function, 1), do: function.(args)

  def run_tool(function, args, context) when is_function(function, 2),
    do: function.(args, context)

  @doc false
  # On the agent's node: starts the relay and the run; answers once the run
  # started (or could not).
  def start_relay(receiver, owner, ref, name, prompt, call, reply, window) do
    starter = self()

    {:ok, relay} =
      Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn ->
        relay(starter, receiver, owner, ref, name, prompt, call, reply, window)
      end)

    monitor = Process.monitor(relay)

    receive do
      {^relay, started} ->
        Process.demonitor(monitor, [:flush])
        started

      {:DOWN, ^monitor, :process, _, reason} ->
        {:error, Error.new(:internal, "the relay failed to start: #{inspect(reason)}")}
    end
  end

  defp relay(starter, receiver, owner, ref, name, prompt, call, reply, window) do
    Process.monitor(owner)
    if receiver != owner, do: Process.monitor(receiver)

    case Agent.start_local(name, prompt, call, reply, self(), window) do
      {:ok, run} ->
        send(starter, {self(), {:ok, self()}})
        forward(run, receiver, ref)

      {:error, error} ->
        send(starter, {self(), {:error, error}})
    end
  end

  defp forward(%Run{ref: run_ref} = run, receiver, ref) do
    receive do
      {:synapse_reply, ^run_ref, reply} ->
        send(receiver, {:synapse_reply, ref, reply})

      {:synapse_event, ^run_ref, {final, _} = event} when final in [:result, :error] ->
        send(receiver, {:synapse_event, ref, event})

      {:synapse_event, ^run_ref, event} ->
        send(receiver, {:synapse_event, ref, event})
        forward(run, receiver, ref)

      :relay_cancel ->
        # The final message (a :cancelled error) still comes and is forwarded.
        Native.run_cancel(run.handle)
        forward(run, receiver, ref)

      {:relay_ack, count} ->
        Native.run_ack(run.handle, count)
        forward(run, receiver, ref)

      {:DOWN, _monitor, :process, _pid, _reason} ->
        Native.run_cancel(run.handle)
    end
  end
end
