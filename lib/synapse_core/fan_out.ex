defmodule SynapseCore.FanOut do
  @moduledoc false
  # One streamed run's events delivered to several subscribers (a list of
  # pids or a :pg group's members, on any node): `run_stream/3` with
  # `stream_to: [pid, ...]` or `stream_to: {:pg, ...}`.
  #
  # A hub process on the caller's node is the run's receiver: it forwards
  # each event to every subscriber, in order, and acknowledges an event to
  # the run only once every subscriber has acknowledged it. The run's window
  # then bounds each subscriber's mailbox as it bounds a single receiver's,
  # and the slowest subscriber sets the pace. A subscriber that exits (or
  # whose node goes down) is dropped; once none is left, the run is
  # cancelled. The members of a :pg group are those of the run's start.
  #
  # Each subscriber first gets `{:synapse_subscribed, run}`: the run to
  # `ack/2` (and may `cancel/1`), its acknowledgements going to the hub.

  alias SynapseCore.{Error, Native, Run}

  @doc false
  # The cast of `stream_to:`: a local pid as before, or the subscribers of a fan-out.
  @spec cast_stream_to(term()) :: {:ok, pid() | {:fan_out, term()} | nil} | {:error, String.t()}
  def cast_stream_to(nil), do: {:ok, nil}
  def cast_stream_to(pid) when is_pid(pid) and node(pid) == node(), do: {:ok, pid}

  def cast_stream_to([_ | _] = pids) do
    if not List.improper?(pids) and Enum.all?(pids, &is_pid/1),
      do: {:ok, {:fan_out, Enum.uniq(pids)}},
      else: {:error, description()}
  end

  def cast_stream_to({:pg, group}), do: {:ok, {:fan_out, {:pg, :pg, group}}}

  def cast_stream_to({:pg, scope, group}) when is_atom(scope),
    do: {:ok, {:fan_out, {:pg, scope, group}}}

  def cast_stream_to(_other), do: {:error, description()}

  @doc false
  def description,
    do: "a local pid, a non-empty list of pids, {:pg, group} or {:pg, scope, group}"

  @doc """
  Starts a fan-out to `subscribers`: `start_run` starts the run with the
  hub as its receiver. Returns the caller's run (its cancel goes through
  the hub).
  """
  @spec start(term(), pos_integer() | :infinity, (pid() -> {:ok, Run.t()} | {:error, Error.t()})) ::
          {:ok, Run.t()} | {:error, Error.t()}
  def start(subscribers, window, start_run) do
    case members(subscribers) do
      [] ->
        {:error,
         Error.new(:invalid_argument, "stream_to: #{inspect(subscribers)} has no subscriber")}

      members ->
        caller = self()

        {:ok, hub} =
          Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn ->
            init(caller, members, window)
          end)

        started =
          try do
            start_run.(hub)
          rescue
            # The hub must not outlive a start that raised.
            error ->
              Process.exit(hub, :kill)
              reraise error, __STACKTRACE__
          end

        case started do
          {:ok, run} ->
            send(hub, {:run, run})
            {:ok, %Run{run | fan_out: hub}}

          {:error, _} = error ->
            Process.exit(hub, :kill)
            error
        end
    end
  end

  defp members({:pg, scope, group}) do
    :pg.get_members(scope, group)
  rescue
    # The scope is not started on this node.
    ArgumentError -> []
  end

  defp members(pids) when is_list(pids), do: pids

  defp init(caller, members, window) do
    # A caller that exits while it starts the run never hands it over.
    caller = Process.monitor(caller)

    receive do
      {:DOWN, ^caller, :process, _, _} ->
        :ok

      {:run, %Run{ref: ref} = run} ->
        Process.demonitor(caller, [:flush])

        subscribers =
          Map.new(members, fn pid ->
            send(
              pid,
              {:synapse_subscribed,
               %Run{run | handle: nil, relay: nil, receiver: pid, fan_out: self()}}
            )

            {pid, %{monitor: Process.monitor(pid), acked: 0}}
          end)

        # A run on another node is not watched here: its guard (see
        # SynapseCore.Remote) sends the run's end if its relay is lost, after
        # the events before it. A monitor of the relay raced that end.
        loop(%{
          run: run,
          ref: ref,
          window: window,
          subscribers: subscribers,
          forwarded: 0,
          acked: 0
        })
    end
  end

  defp loop(%{ref: ref} = state) do
    receive do
      {:synapse_event, ^ref, {final, _} = event} when final in [:result, :error] ->
        forward(state, event)

      {:synapse_event, ^ref, event} ->
        forward(state, event)
        loop(%{state | forwarded: state.forwarded + 1})

      {:synapse_fan_out_ack, pid, count} when is_map_key(state.subscribers, pid) ->
        state
        |> update_in([:subscribers, pid, :acked], &min(&1 + count, state.forwarded))
        |> acknowledge()
        |> loop()

      {:synapse_fan_out_ack, _pid, _count} ->
        loop(state)

      :relay_cancel ->
        # The run's final message (a :cancelled error) still comes and is forwarded.
        cancel(state.run)
        loop(state)

      {:DOWN, monitor, :process, pid, _reason} ->
        case Map.pop(state.subscribers, pid) do
          {%{monitor: ^monitor}, subscribers} when subscribers == %{} ->
            # Nobody watches any more.
            cancel(state.run)

          {%{monitor: ^monitor}, subscribers} ->
            loop(acknowledge(%{state | subscribers: subscribers}))

          _ ->
            loop(state)
        end
    end
  end

  defp forward(state, event) do
    Enum.each(Map.keys(state.subscribers), &send(&1, {:synapse_event, state.ref, event}))
  end

  # Acknowledges to the run what every subscriber has.
  defp acknowledge(%{window: :infinity} = state), do: state

  defp acknowledge(state) do
    all = state.subscribers |> Map.values() |> Enum.map(& &1.acked) |> Enum.min()

    if all > state.acked do
      Run.ack(state.run, all - state.acked)
      %{state | acked: all}
    else
      state
    end
  end

  defp cancel(%Run{relay: nil, handle: handle}), do: Native.run_cancel(handle)
  defp cancel(%Run{relay: relay}), do: send(relay, :relay_cancel)
end
