defmodule SynapseCore.Run do
  @moduledoc """
  A run in flight, started with `SynapseCore.Agent.run/3` (or, with
  `:stream_to`, `SynapseCore.Agent.run_stream/3`).

  Like a `Task`, a run belongs to the process that started it: only that
  process can `SynapseCore.Agent.await/2` or `SynapseCore.Agent.yield/2` it,
  and if that process exits, the run is cancelled (in Python too), as it is
  when a streamed run's receiver exits. Any process may
  `SynapseCore.Agent.cancel/1` it. Nothing else ends a run before its result
  or its `:timeout`: a process may keep only `ref` and drop the struct (a
  receiver matching on the tag, say), and the run goes on.

  The fields are for reading: `ref` tags every message of the run
  (`{:synapse_event, ref, event}` for streamed runs), `agent` is the agent's
  name, `owner` the process that started it, `receiver` where a streamed
  run's events go, `fan_out` the process that delivers them to several
  subscribers (`stream_to:` a list or a `:pg` group).
  """

  alias SynapseCore.{Error, Native, Options, Telemetry}

  @type t :: %__MODULE__{
          ref: reference(),
          handle: reference() | nil,
          agent: term(),
          owner: pid(),
          receiver: pid() | nil,
          timeout: timeout(),
          relay: pid() | nil,
          guard: pid() | nil,
          span: Telemetry.span() | nil,
          fan_out: pid() | nil,
          worker: pid() | nil
        }

  @enforce_keys [:ref, :handle, :agent, :owner, :timeout]
  # `span`: the run's telemetry span, ended where its answer is received.
  # `worker`: the `SynapseCore.Worker` of this node the run went to, told
  # when the run finds its agent missing there (see `over/2`).
  # `guard`: for a run on another node, the process on this node that
  # passes its relay's messages on (see SynapseCore.Remote) and ends once
  # it has passed the final one.
  defstruct [
    :ref,
    :handle,
    :agent,
    :owner,
    :receiver,
    :timeout,
    :relay,
    :guard,
    :span,
    :fan_out,
    :worker
  ]

  # What follows is the message protocol of a call in flight (see
  # SynapseCore.Native), shared by agents' runs and bridges' calls.

  # The NIF answers exactly once, at the latest when the call's own deadline
  # passes; waiting a little longer only guards against a lost reply.
  @reply_margin 5_000

  # How long a wait goes before it reads the run's answered note again (it
  # reads it once more when the wait runs out). The NIF sets the note just
  # after it sends the answer, so a process that took the answer at once
  # and waits again may read it unset for a moment (longer when the sending
  # thread is preempted in between): read again, the note tells it the
  # answer was taken, instead of waiting the whole wait for nothing.
  @note_reread 100

  @doc false
  # A one-shot call: `start` starts it in the NIF with the tag it is given;
  # this waits for its one reply.
  @spec unary(term(), timeout(), (reference() -> {:ok, reference()} | {:error, Error.t()})) ::
          {:ok, term()} | {:error, Error.t()}
  def unary(agent, timeout, start) do
    ref = make_ref()

    case start.(ref) do
      {:ok, handle} ->
        await(
          %__MODULE__{ref: ref, handle: handle, agent: agent, owner: self(), timeout: timeout},
          :infinity
        )

      {:error, %Error{} = error} ->
        {:error, error}
    end
  end

  @doc false
  # A streamed call that `start` starts in the NIF with the tag it is given,
  # its events sent to the calling process: a lazy stream of what the call
  # answers, ending with it.
  @spec stream_call(
          term(),
          keyword(),
          (reference() -> {:ok, reference()} | {:error, Error.t()})
        ) :: Enumerable.t()
  def stream_call(agent, opts, start) do
    fn ->
      ref = make_ref()

      with {:ok, handle} <- start.(ref) do
        {:ok,
         %__MODULE__{
           ref: ref,
           handle: handle,
           agent: agent,
           owner: self(),
           receiver: self(),
           timeout: opts[:timeout]
         }}
      end
    end
    |> stream(opts[:window], :halt)
    |> Stream.map(fn {:message, message} -> message end)
  end

  @doc false
  @spec await(t(), timeout()) :: {:ok, term()} | {:error, Error.t()}
  def await(%__MODULE__{} = run, timeout) do
    timeout = Options.timeout!(timeout, "await/2")
    check_owner!(run, :await)
    check_replies!(run, :await)

    receive_reply(run, wait_limit(run, timeout), fn -> over(run, give_up(run, timeout)) end)
  end

  # The wait is over: the run is cancelled, and what it did (its messages
  # and usage, when it answers them in time) is kept in the error; a result
  # that arrives meanwhile is returned.
  defp give_up(run, timeout) do
    message = "the run did not finish within #{timeout_text(run, timeout)}"

    case stop(run) do
      {:ok, _result} = finished -> finished
      {:error, %Error{details: details}} -> {:error, Error.new(:timeout, message, kept(details))}
      nil -> {:error, Error.new(:timeout, message)}
    end
  end

  defp kept(details),
    do: Map.take(details, [:messages, :new_message_index, :usage, :run_id])

  # Cancels the run and takes its final message (and any event before it)
  # out of the mailbox; returns it, or nil if none came.
  defp stop(%__MODULE__{relay: nil, handle: handle, ref: ref}) do
    final(ref, Native.run_cancel(handle))
  end

  defp stop(%__MODULE__{relay: relay, ref: ref, guard: guard}) do
    send(relay, :relay_cancel)
    final(ref, :ok, guard)
  end

  @doc false
  @spec yield(t(), timeout()) :: {:ok, term()} | {:error, Error.t()} | nil
  def yield(%__MODULE__{} = run, timeout) do
    timeout = Options.timeout!(timeout, "yield/2")
    check_owner!(run, :yield)
    check_replies!(run, :yield)
    receive_reply(run, timeout, fn -> nil end)
  end

  defp receive_reply(%__MODULE__{} = run, wait, on_timeout) do
    # Read before the mailbox: an answer sent by then is there, unless this
    # process took it already (an earlier await, yield or cancel/1), when
    # waiting would only run out the wait, or never end.
    answered = answered?(run)
    guard = watch(run)
    first = min(wait, @note_reread)

    then =
      cond do
        answered -> :taken
        wait == first -> {:reread, on_timeout}
        true -> {:reread, {:wait, remaining(wait, first), {:reread, on_timeout}}}
      end

    try do
      reply_within(run, guard, if(answered, do: 0, else: first), then)
    after
      if guard, do: Process.demonitor(guard, [:flush])
    end
  end

  # The answer if it comes within `wait`, else what `then` says: the answer
  # was taken already (`:taken`); read the note again, then go on
  # (`{:reread, then}`); wait more (`{:wait, ms, then}`); or `on_timeout`.
  defp reply_within(%__MODULE__{ref: ref} = run, guard, wait, then) do
    receive do
      {:synapse_reply, ^ref, reply} ->
        over(run, reply)

      {:DOWN, ^guard, :process, _, _} ->
        # A run on another node: its guard passed the final message on
        # before it ended (it ends only so once the run is handed over),
        # so the message is here, or was taken already.
        reply_within(run, nil, 0, :taken)
    after
      wait -> go_on(run, guard, then)
    end
  end

  defp go_on(run, _guard, :taken), do: raise(ArgumentError, taken_text(run))

  defp go_on(run, guard, {:reread, then}) do
    if answered?(run), do: reply_within(run, guard, 0, :taken), else: go_on(run, guard, then)
  end

  defp go_on(run, guard, {:wait, wait, then}), do: reply_within(run, guard, wait, then)
  defp go_on(_run, _guard, on_timeout) when is_function(on_timeout, 0), do: on_timeout.()

  defp remaining(:infinity, _waited), do: :infinity
  defp remaining(wait, waited), do: wait - waited

  # Known for a call of this node; a run relayed from another node is
  # known to have answered once its guard has ended.
  defp answered?(%__MODULE__{relay: nil, fan_out: nil, handle: handle}) when handle != nil,
    do: Native.run_answered(handle)

  defp answered?(_run), do: false

  defp watch(%__MODULE__{guard: guard}) when is_pid(guard), do: Process.monitor(guard)
  defp watch(_run), do: nil

  defp taken_text(%__MODULE__{ref: ref}) do
    "the run #{inspect(ref)} has answered, and its answer was taken already " <>
      "(by an earlier await/2, yield/2 or cancel/1): there is nothing more to wait for"
  end

  @doc false
  @spec cancel(t()) :: :ok
  def cancel(run) do
    # The caller took the run's answer out of its mailbox: the run is over.
    case cancel_and_flush(run) do
      nil -> :ok
      final -> over(run, final)
    end

    :ok
  end

  # Cancels the run; when the caller is its receiver, returns its final
  # answer (taken out of the mailbox), or nil. A run streamed to several
  # subscribers is cancelled through its hub (SynapseCore.FanOut), which
  # forwards the final message to them all.
  defp cancel_and_flush(%__MODULE__{fan_out: hub} = run) when is_pid(hub) do
    # The hub may be on another node (a subscriber's run): it is watched,
    # not asked whether it is alive. It ends once it has forwarded the
    # run's final message, so its end stops the wait.
    send(hub, :relay_cancel)
    if run.receiver == self(), do: final(run.ref, :ok, hub)
  end

  defp cancel_and_flush(%__MODULE__{relay: nil, handle: handle} = run) do
    cancelled = Native.run_cancel(handle)
    if receiver(run) == self(), do: final(run.ref, cancelled)
  end

  defp cancel_and_flush(%__MODULE__{relay: relay} = run) do
    send(relay, :relay_cancel)
    if receiver(run) == self(), do: final(run.ref, :ok, run.guard)
  end

  # The run's answer reached the process that receives it: its telemetry
  # span ends. A worker that no longer has the agent (a remote worker
  # restarted without it) is told at once, rather than at its next health
  # check (or never, with `health_interval: :infinity`): it loads it again.
  defp over(%__MODULE__{span: span} = run, reply) do
    with {:error, %Error{kind: :not_found}} <- reply,
         pid when is_pid(pid) <- run.worker,
         do: SynapseCore.Worker.agent_missing(pid)

    Telemetry.run_stop(span, reply)
  end

  # The same for a stream this process enumerates, which also reports the
  # back-pressure its worker met (known here for a worker of this node).
  defp stream_over(%__MODULE__{relay: nil} = run, reply) do
    Telemetry.backpressure(run.agent, run.handle, run.span)
    over(run, reply)
  end

  defp stream_over(run, reply), do: over(run, reply)

  @most_credit Bitwise.bsl(1, 62)

  @doc false
  @spec ack(t(), pos_integer()) :: :ok
  def ack(%__MODULE__{fan_out: hub}, count) when is_pid(hub) do
    send(hub, {:synapse_fan_out_ack, self(), count})
    :ok
  end

  # Credit past what any stream can hold changes nothing (the NIF keeps at
  # most its maximum); a count beyond the NIF's integer must not be a bare
  # badarg.
  def ack(%__MODULE__{relay: nil, handle: handle}, count),
    do: Native.run_ack(handle, min(count, @most_credit))

  def ack(%__MODULE__{relay: relay}, count) do
    send(relay, {:relay_ack, count})
    :ok
  end

  @doc false
  # A lazy stream over a streamed call that `start` starts in the
  # enumerating process. With `:emit`, the final `{:result, _}` event is part
  # of the stream; with `:halt`, the stream just ends there.
  @spec stream((() -> {:ok, t()} | {:error, Error.t()}), pos_integer() | :infinity, :emit | :halt) ::
          Enumerable.t()
  def stream(start, window, on_result) do
    Stream.resource(
      fn ->
        case start.() do
          {:ok, run} ->
            %{run: run, window: window, on_result: on_result, unacked: 0, state: :running}

          {:error, error} ->
            raise error
        end
      end,
      &next_event/1,
      &close_stream/1
    )
  end

  defp next_event(%{state: :done} = stream), do: {:halt, stream}
  defp next_event(%{state: {:failed, error}}), do: raise(error)

  defp next_event(%{run: %__MODULE__{ref: ref} = run} = stream) do
    receive do
      {:synapse_event, ^ref, {:result, result} = event} ->
        stream_over(run, {:ok, result})
        emitted = if stream.on_result == :emit, do: [event], else: []
        {emitted, %{stream | state: :done}}

      {:synapse_event, ^ref, {:error, error}} ->
        stream_over(run, {:error, error})
        # Raised on the next pull, once the state says the call is over, so
        # that closing the stream does not cancel a finished call.
        {[], %{stream | state: {:failed, error}}}

      {:synapse_event, ^ref, event} ->
        {[event], acknowledge(stream)}
    after
      wait_limit(run, :infinity) ->
        cancel_and_flush(run)

        error =
          Error.new(:timeout, "the stream did not finish within #{timeout_text(run, :infinity)}")

        stream_over(run, {:error, error})
        {[], %{stream | state: {:failed, error}}}
    end
  end

  defp acknowledge(%{window: :infinity} = stream), do: stream

  defp acknowledge(%{window: window, unacked: unacked, run: run} = stream) do
    unacked = unacked + 1

    if unacked >= max(div(window, 2), 1) do
      ack(run, unacked)
      %{stream | unacked: 0}
    else
      %{stream | unacked: unacked}
    end
  end

  # Halted early: the run is cancelled, and its answer taken.
  defp close_stream(%{state: :running, run: run}) do
    case cancel_and_flush(run) do
      nil -> :ok
      final -> stream_over(run, final)
    end

    :ok
  end

  defp close_stream(_stream), do: :ok

  defp check_owner!(%__MODULE__{owner: owner}, action) do
    if owner != self() do
      raise ArgumentError,
            "a run can only be #{action}ed by the process that started it (#{inspect(owner)})"
    end
  end

  # A streamed run (its `receiver` set) ends with its last event, not with
  # the reply await and yield wait for: they would wait out the run's
  # timeout, or forever, for an answer that went elsewhere.
  defp check_replies!(%__MODULE__{receiver: nil}, _action), do: :ok

  defp check_replies!(%__MODULE__{}, action) do
    raise ArgumentError,
          "a run streamed with :stream_to cannot be #{action}ed: its result is its last " <>
            "event, {:synapse_event, ref, {:result, result}} (or {:error, error})"
  end

  defp receiver(%__MODULE__{receiver: nil, owner: owner}), do: owner
  defp receiver(%__MODULE__{receiver: receiver}), do: receiver

  defp wait_limit(%__MODULE__{timeout: :infinity}, timeout), do: timeout
  defp wait_limit(%__MODULE__{timeout: own}, :infinity), do: own + @reply_margin
  defp wait_limit(%__MODULE__{timeout: own}, timeout), do: min(timeout, own + @reply_margin)

  defp timeout_text(%__MODULE__{timeout: own}, :infinity), do: "#{own} ms"
  defp timeout_text(_run, timeout), do: "#{timeout} ms"

  # After a cancel the NIF still sends the call's one final message (a
  # `:cancelled` error, unless the call finished first); take it, and any
  # events before it, out of the mailbox. A call that had answered when it
  # was cancelled (`:over`) sends nothing more: what it sent is taken if it
  # is still there, with no wait. Nor does a run whose `guard` (a remote
  # run's guard, a fan-out's hub) has ended: it passed the final message on
  # before.
  defp final(ref, cancelled, guard \\ nil) do
    monitor = if guard, do: Process.monitor(guard)

    try do
      final_message(ref, cancelled, monitor)
    after
      if monitor, do: Process.demonitor(monitor, [:flush])
    end
  end

  defp final_message(ref, cancelled, monitor) do
    receive do
      {:synapse_reply, ^ref, reply} -> reply
      {:synapse_event, ^ref, {:result, result}} -> {:ok, result}
      {:synapse_event, ^ref, {:error, _} = error} -> error
      {:synapse_event, ^ref, _event} -> final_message(ref, cancelled, monitor)
      {:DOWN, ^monitor, :process, _, _} -> nil
    after
      if(cancelled == :over, do: 0, else: @reply_margin) -> nil
    end
  end
end
