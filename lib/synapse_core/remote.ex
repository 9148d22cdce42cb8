defmodule SynapseCore.Remote do
  @moduledoc false
  # Runs on an agent, and calls of a bridge, on another node. Workers join a
  # `:pg` group per agent (or bridge) name when they serve; a caller whose
  # node has no ready worker for the name starts the call through a relay on
  # a node that has one.
  #
  # The relay (a process on that node, under SynapseCore.ToolSupervisor)
  # owns the run there and forwards its messages, unchanged but for the tag,
  # to the caller's receiver, through a guard on the caller's node: the
  # caller awaits, streams and cancels exactly as for a local run. The relay
  # monitors the caller and the guard, which exits with the receiver (either
  # exiting cancels the run); the guard monitors the relay (the node going
  # down ends the run with :worker_exited, the receiver's one final
  # message). Stream credit goes end to end: the consumer's acknowledgements
  # travel to the relay, which passes them to the NIF. Tools given by the caller run on the caller's node: the
  # relay's node calls back for each tool call.

  alias SynapseCore.{Agent, Bridge, Error, Native, Run, Telemetry, Tool, Workers}

  @start_timeout 15_000

  @doc """
  Starts a run of the agent `name` on `node`. With a telemetry `span`, the
  run's end is reported by an observer on this node, which the relay tells
  the run's outcome (for a `:stream_to` receiver, whose messages Synapse
  does not see).
  """
  @spec start(
          node(),
          term(),
          String.t(),
          map(),
          :sync | :unary | :stream,
          pid(),
          pos_integer() | :infinity,
          Telemetry.span() | nil
        ) :: {:ok, Run.t()} | {:error, Error.t()}
  def start(node, name, prompt, call, reply, receiver, window, span \\ nil) do
    call = %{call | tools: Enum.map(call.tools, &call_back(&1, node()))}
    observer = if span, do: observe(span, self())
    agent = {:agent, name, prompt, call, reply, window, observer}

    case start_call(node, agent, reply, receiver, call.timeout) do
      {:ok, run} when observer != nil ->
        send(observer, {:watch, run.relay})
        {:ok, run}

      {:error, _} = failed when observer != nil ->
        Process.exit(observer, :kill)
        failed

      started ->
        started
    end
  end

  # Ends the run's telemetry span when the relay tells the run's outcome,
  # or, if the relay ends first, with why.
  defp observe(span, caller) do
    {:ok, observer} =
      Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn ->
        # A caller that exits while it starts the run never tells of a relay.
        caller = Process.monitor(caller)

        receive do
          {:DOWN, ^caller, :process, _, _} ->
            :ok

          {:watch, relay} ->
            Process.demonitor(caller, [:flush])
            monitor = Process.monitor(relay)

            receive do
              {:synapse_run_done, _ref, outcome} ->
                Telemetry.run_stop(span, outcome)

              {:DOWN, ^monitor, :process, _, :normal} ->
                # The relay stops so when the run's receiver exits (a run
                # whose caller exits ends with its final message, above).
                error = Error.new(:cancelled, "the run's receiver exited")
                Telemetry.run_stop(span, {:error, error})

              {:DOWN, ^monitor, :process, _, reason} ->
                Telemetry.run_stop(span, {:error, node_lost(relay, reason)})
            end
        end
      end)

    observer
  end

  @doc "Starts a call of the bridge `name` on `node` (see `SynapseCore.Bridge.start_local/6`)."
  @spec start_bridge(
          node(),
          term(),
          SynapseCore.Bridge.descriptor(),
          String.t(),
          map(),
          :unary | :stream,
          map()
        ) ::
          {:ok, Run.t()} | {:error, Error.t()}
  def start_bridge(node, name, descriptor, method, request, reply, options) do
    call = {:bridge, name, descriptor, method, request, reply, options}
    start_call(node, call, reply, self(), options.timeout)
  end

  # A node whose workers left the `:pg` group a moment ago may still be in
  # it here: when the node answers that it has no worker serving the name
  # (nothing was started there), the call goes to another node that has,
  # as it would have had the group been up to date. A node that cannot be
  # reached is not tried again elsewhere: the call may have started there.
  defp start_call(node, call, reply, receiver, timeout, tried \\ []) do
    case start_relayed(node, call, reply, receiver, timeout) do
      {:error, %Error{kind: kind}} = failed when kind in [:unknown_agent, :unavailable] ->
        tried = [node | tried]

        case Workers.pick_remote(elem(call, 1), tried) do
          nil -> failed
          next -> start_call(next, call, reply, receiver, timeout, tried)
        end

      {:unreachable, error} ->
        {:error, error}

      started ->
        started
    end
  end

  defp start_relayed(node, call, reply, receiver, timeout) do
    ref = make_ref()
    guard = start_guard(receiver, self(), ref, reply)

    case relay_on(node, guard, ref, call) do
      {:ok, relay} ->
        send(guard, {:relay, relay})

        {:ok,
         %Run{
           ref: ref,
           handle: nil,
           relay: relay,
           guard: guard,
           agent: elem(call, 1),
           owner: self(),
           receiver: if(reply == :stream, do: receiver),
           timeout: timeout
         }}

      {tag, %Error{} = error} ->
        Process.exit(guard, :kill)
        {tag, error}
    end
  end

  # `{:error, error}`: the node answered that the call could not start;
  # `{:unreachable, error}`: it did not answer.
  defp relay_on(node, guard, ref, call) do
    :erpc.call(node, __MODULE__, :start_relay, [guard, self(), ref, call], @start_timeout)
  catch
    :error, {:erpc, reason} ->
      unreachable(node, reason)

    # `start_relay` raised there: what it raised, not where (its stacktrace
    # may hold the call's arguments).
    :error, {:exception, reason, _stacktrace} ->
      message = Exception.format_banner(:error, reason)
      {:error, Error.new(:internal, "the relay on #{node} failed to start: #{message}")}

    :exit, reason ->
      unreachable(node, reason)
  end

  defp unreachable(node, reason),
    do:
      {:unreachable,
       Error.new(:unavailable, "node #{node} cannot be reached: #{inspect(reason)}")}

  # The relay's messages reach the receiver through a guard on this node,
  # which knows whether the final one came: if the relay is lost first (its
  # node went down), the guard sends the receiver the run's end itself, so
  # that whoever receives the run (the caller, or another process with
  # `:stream_to`) gets exactly one final message, and nobody a stray
  # monitor message. The guard exits with its receiver, which the relay
  # (monitoring the guard) takes as the receiver's exit: the run is
  # cancelled.
  defp start_guard(receiver, caller, ref, reply) do
    {:ok, guard} =
      Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn ->
        receiver_monitor = Process.monitor(receiver)
        # A caller that exits while it starts the relay never hands it over.
        caller_monitor = Process.monitor(caller)

        receive do
          {:relay, relay} ->
            Process.demonitor(caller_monitor, [:flush])
            guard(receiver, ref, final_tag(reply), Process.monitor(relay), receiver_monitor)

          {:DOWN, monitor, :process, _, _} when monitor in [receiver_monitor, caller_monitor] ->
            :ok
        end
      end)

    guard
  end

  defp final_tag(:stream), do: :synapse_event
  defp final_tag(_unary), do: :synapse_reply

  defp guard(receiver, ref, tag, relay_monitor, receiver_monitor) do
    receive do
      {:synapse_reply, ^ref, _reply} = final ->
        send(receiver, final)

      {:synapse_event, ^ref, {kind, _}} = final when kind in [:result, :error] ->
        send(receiver, final)

      {:synapse_event, ^ref, _event} = event ->
        send(receiver, event)
        guard(receiver, ref, tag, relay_monitor, receiver_monitor)

      {:DOWN, ^relay_monitor, :process, relay, reason} ->
        error = node_lost(relay, reason)

        send(receiver, final_message(tag, ref, error))

      {:DOWN, ^receiver_monitor, :process, _, _} ->
        :ok
    end
  end

  defp final_message(:synapse_event, ref, error), do: {:synapse_event, ref, {:error, error}}
  defp final_message(:synapse_reply, ref, error), do: {:synapse_reply, ref, {:error, error}}

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
  # On the agent's (or bridge's) node: starts the relay and the call; answers
  # once the call started (or could not).
  def start_relay(receiver, owner, ref, call) do
    starter = self()

    {:ok, relay} =
      Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn ->
        relay(starter, receiver, owner, ref, call)
      end)

    monitor = Process.monitor(relay)

    receive do
      {^relay, started} ->
        Process.demonitor(monitor, [:flush])
        started

      {:DOWN, ^monitor, :process, _, reason} ->
        {:error, Error.new(:internal, "the relay failed to start: #{exit_text(reason)}")}
    end
  end

  defp relay(starter, receiver, owner, ref, call) do
    Process.monitor(owner)
    receiver_monitor = Process.monitor(receiver)

    case start_here(call, owner) do
      {:ok, run} ->
        send(starter, {self(), {:ok, self()}})
        forward(run, receiver, ref, observer(call), receiver_monitor)

      {:error, error} ->
        send(starter, {self(), {:error, error}})
    end
  end

  defp observer({:agent, _name, _prompt, _call, _reply, _window, observer}), do: observer
  defp observer(_bridge), do: nil

  # The call, on this node's workers, on the worker of the caller (`owner`,
  # on its node) as the caller's own call would be; its messages come to
  # the relay.
  defp start_here({:agent, name, prompt, call, reply, window, _observer}, owner),
    do: Agent.start_local(name, prompt, call, reply, self(), window, owner)

  defp start_here({:bridge, name, descriptor, method, request, reply, options}, owner),
    do: Bridge.start_local(name, descriptor, method, request, reply, options, owner)

  # `receiver_monitor` watches the receiver (the caller's guard); the
  # other monitor, the run's caller.
  defp forward(%Run{ref: run_ref} = run, receiver, ref, observer, receiver_monitor) do
    receive do
      {:synapse_reply, ^run_ref, reply} ->
        send(receiver, {:synapse_reply, ref, reply})

      {:synapse_event, ^run_ref, {final, outcome} = event} when final in [:result, :error] ->
        send(receiver, {:synapse_event, ref, event})
        if observer, do: send(observer, {:synapse_run_done, ref, done(final, outcome)})

      {:synapse_event, ^run_ref, event} ->
        send(receiver, {:synapse_event, ref, event})
        forward(run, receiver, ref, observer, receiver_monitor)

      :relay_cancel ->
        # The final message (a :cancelled error) still comes and is forwarded.
        Native.run_cancel(run.handle)
        forward(run, receiver, ref, observer, receiver_monitor)

      {:relay_ack, count} ->
        Native.run_ack(run.handle, count)
        forward(run, receiver, ref, observer, receiver_monitor)

      {:DOWN, ^receiver_monitor, :process, _pid, _reason} ->
        # Nobody is left to tell.
        Native.run_cancel(run.handle)

      {:DOWN, _caller_monitor, :process, _pid, _reason} ->
        # The caller exited, and the run with it, as on the caller's node;
        # the receiver (a `:stream_to` process, a fan-out's hub) still gets
        # its final :cancelled error, not the relay's end, which its guard
        # would take for the node's loss.
        Native.run_cancel(run.handle)
        forward(run, receiver, ref, observer, receiver_monitor)
    end
  end

  # What an observer is told of a run's outcome, as a tool runner is.
  defp done(:result, %{usage: usage}), do: {:ok, usage}
  defp done(:error, error), do: {:error, error}

  @doc false
  # The error of a run whose relay (on the node running the agent) is gone.
  @spec node_lost(pid(), term()) :: Error.t()
  def node_lost(relay, reason) do
    Error.new(
      :worker_exited,
      "the node running the agent (#{node(relay)}) was lost: #{exit_text(reason)}"
    )
  end

  # An exit reason for an error's message: an exception's banner, never its
  # stacktrace (whose top frame may hold a call's arguments).
  defp exit_text({reason, [{_, _, _, _} | _] = stacktrace}),
    do: Exception.format_banner(:error, reason, stacktrace)

  defp exit_text(reason), do: inspect(reason)
end
