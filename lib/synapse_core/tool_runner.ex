defmodule SynapseCore.ToolRunner do
  @moduledoc false
  # Executes the Elixir tools of one run. One is started per run that has
  # tools, under SynapseCore.ToolSupervisor; the NIF sends it the run's tool
  # requests. Each call runs in a process of its own, linked to the runner
  # (which traps exits), bounded by the tool's timeout. The call answers
  # through the NIF itself, and then tells the runner: the answer reaches
  # Python with no hop back through the runner, or through a supervisor to
  # start the call (a tool round trip is a handful of process wake-ups, each
  # of which a sleeping scheduler pays for). Whoever claims a call first
  # answers it, exactly once: the call with its outcome, or the runner when
  # the tool's timeout passes or the call's process dies. The claim is
  # taken by the NIF that sends the answer (`Native.run_tool_result`), so a
  # claim taken is an answer sent: a process killed while it answers has
  # answered. The runner stops when the run is over or its owner exits,
  # killing any call still running. Should the runner itself be killed, its
  # links take the calls with it, and a call that traps exits (its tool set
  # the flag) is killed by the run's reaper, a process that monitors the
  # runner and knows its calls (each tells it first thing): the run's deadline ends the
  # run in Python (which then answers what it did), and so the calls it was
  # waiting for. A run with an :approver has a runner too, which asks the
  # approver about each call needing approval and takes its decisions
  # (SynapseCore.Approval).
  #
  # The runner of a run streamed to a `:stream_to` receiver (started for it
  # even when the run has no tools, while :telemetry is loaded) also ends
  # the run's telemetry span: it is told the run's outcome as the run
  # answers, and nobody else in Synapse sees the receiver's messages.

  require Logger

  alias SynapseCore.{Approval, Error, Native, Schema, Telemetry, Tool}
  alias SynapseCore.Tool.Context

  @type config :: %{
          tools: [Tool.t()],
          agent: term(),
          deps: term(),
          owner: pid(),
          span: Telemetry.span() | nil,
          approver: Approval.approver() | nil,
          approval_timeout: timeout()
        }

  @doc "Starts a runner; give it its run with `attach/3`."
  @spec start(config()) :: {:ok, pid()}
  def start(config) do
    Task.Supervisor.start_child(SynapseCore.ToolSupervisor, fn -> init(config) end)
  end

  @doc "Hands the runner its run: the call handle and the run's tag."
  @spec attach(pid(), reference(), reference()) :: :ok
  def attach(runner, handle, tag) do
    send(runner, {:attach, handle, tag})
    :ok
  end

  @doc "Stops a runner whose run could not start."
  @spec stop(pid()) :: :ok
  def stop(runner) do
    Process.exit(runner, :kill)
    :ok
  end

  defp init(config) do
    owner = Process.monitor(config.owner)

    receive do
      {:attach, handle, tag} ->
        # The calls are linked to the runner: the runner's end, however it
        # comes, is theirs. Its supervisor (its only link so far) stopping
        # it arrives as a message, and stops it.
        {:links, parents} = Process.info(self(), :links)
        Process.flag(:trap_exit, true)
        tools = Map.new(config.tools, &{&1.name, &1})
        approvals = Approval.state(config.approver, config.approval_timeout)

        loop(%{
          config: config,
          tools: tools,
          handle: handle,
          tag: tag,
          owner: owner,
          parents: parents,
          reaper: nil,
          calls: %{},
          approvals: approvals
        })

      {:DOWN, ^owner, :process, _, _} ->
        :ok
    end
  end

  defp loop(%{tag: tag, owner: owner} = state) do
    receive do
      {:synapse_tool_request, ^tag, request} ->
        state |> start_call(request) |> loop()

      {:synapse_tool_answered, pid, outcome} when is_map_key(state.calls, pid) ->
        state |> settled(pid, outcome) |> loop()

      {:EXIT, pid, reason} when is_map_key(state.calls, pid) ->
        state |> exited(pid, reason) |> loop()

      {:EXIT, pid, reason} ->
        # From its supervisor: it stops. From a process that code running
        # here linked (a `:telemetry` handler's Task, say): no concern of
        # the run's if it ended normally; if it crashed, it takes the
        # runner down, as its link would without the trap.
        if reason != :normal or pid in state.parents do
          stop_calls(state)
          exit(reason)
        end

        loop(state)

      {:call_timeout, pid, ms} when is_map_key(state.calls, pid) ->
        state |> timed_out(pid, ms) |> loop()

      {:call_timeout, _pid, _ms} ->
        loop(state)

      {:synapse_approval_request, ^tag, request} ->
        approvals = Approval.request(state.approvals, request, state.handle, state.config.agent)
        loop(%{state | approvals: approvals})

      {:synapse_approval_decide, from, request_id, decision} ->
        approvals =
          Approval.decide_request(state.approvals, from, request_id, decision, state.handle)

        loop(%{state | approvals: approvals})

      {:synapse_approval_timeout, request_id} ->
        loop(%{state | approvals: Approval.expire(state.approvals, request_id, state.handle)})

      {:DOWN, ref, :process, _, _} when is_map_key(state.approvals.watched, ref) ->
        loop(%{state | approvals: Approval.asked_down(state.approvals, ref, state.handle)})

      {:synapse_run_done, ^tag, outcome} ->
        stop_calls(state)
        report_run(state, outcome)

      {:DOWN, ^owner, :process, _, _} ->
        stop_calls(state)
        # The owner's exit cancels the run, which still answers.
        if state.config.span, do: await_done(state)
    end
  end

  defp await_done(%{tag: tag} = state) do
    receive do
      {:synapse_run_done, ^tag, outcome} -> report_run(state, outcome)
    after
      5_000 -> :ok
    end
  end

  defp report_run(%{config: %{span: nil}}, _outcome), do: :ok

  defp report_run(%{config: config, handle: handle}, outcome) do
    Telemetry.backpressure(config.agent, handle, config.span)
    Telemetry.run_stop(config.span, outcome)
    :ok
  end

  defp start_call(state, %{request_id: request_id, name: name} = request) do
    span =
      Telemetry.start([:synapse, :tool], %{
        agent: state.config.agent,
        tool: name,
        tool_call_id: request.tool_call_id,
        run_id: request.run_id,
        retry: request.retry
      })

    case Map.fetch(state.tools, name) do
      {:ok, tool} ->
        context = %Context{
          agent: state.config.agent,
          run_id: request.run_id,
          tool_call_id: request.tool_call_id,
          retry: request.retry,
          max_retries: request.max_retries,
          deps: state.config.deps
        }

        call = %{
          handle: state.handle,
          request_id: request_id,
          name: name,
          claim: Native.run_tool_claim()
        }

        # As a Task would: the caller chain reaches the tool (ownership-based
        # test helpers, such as database sandboxes, follow it).
        callers = [self() | Process.get(:"$callers", [])]
        ancestors = [self() | Process.get(:"$ancestors", [])]
        state = with_reaper(state)
        reaper = state.reaper

        pid =
          spawn_link(fn ->
            send(reaper, {:call, self()})
            Process.put(:"$ancestors", ancestors)
            run_call(tool, request.args, context, call, callers)
          end)

        ms = tool.timeout
        timer = Process.send_after(self(), {:call_timeout, pid, ms}, ms)
        put_in(state.calls[pid], Map.merge(call, %{timer: timer, span: span, settled: false}))

      :error ->
        outcome = {:retry, "There is no tool named #{inspect(name)}."}
        call = %{handle: state.handle, request_id: request_id, name: name}
        answer(Map.put(call, :claim, Native.run_tool_claim()), outcome)
        report(span, outcome)
        state
    end
  end

  # The run's reaper, started with its first call: when the runner goes,
  # however it goes, it kills the calls that told it they run (a call that
  # traps exits outlives its link to a killed runner). A call tells it before
  # any of its tool's code runs, so before it can trap exits: one killed
  # with the runner before then dies with its link.
  defp with_reaper(%{reaper: nil} = state) do
    runner = self()

    reaper =
      spawn(fn ->
        runner = Process.monitor(runner)
        reap(runner, [])
      end)

    %{state | reaper: reaper}
  end

  defp with_reaper(state), do: state

  defp reap(runner, calls) do
    receive do
      {:call, pid} ->
        reap(runner, [pid | calls])

      {:DOWN, ^runner, :process, _, _} ->
        Enum.each(calls ++ told_meanwhile(), &Process.exit(&1, :kill))
    end
  end

  defp told_meanwhile do
    receive do
      {:call, pid} -> [pid | told_meanwhile()]
    after
      0 -> []
    end
  end

  # The call's process: it answers, unless the runner claimed the call first.
  defp run_call(tool, args, context, call, [runner | _] = callers) do
    Process.put(:"$callers", callers)
    outcome = execute(tool, args, context)

    if answer(call, outcome) == :ok do
      send(runner, {:synapse_tool_answered, self(), outcome})
    end
  end

  defp report(span, {:ok, _value}), do: Telemetry.stop([:synapse, :tool], :stop, span, %{})

  defp report(span, {kind, reason}) when kind in [:retry, :failed],
    do: Telemetry.stop([:synapse, :tool], :exception, span, %{reason: reason})

  # The call answered: what is left is its timer and its telemetry. Its
  # entry stays until its exit arrives, so that no exit goes unrecognised.
  defp settled(state, pid, outcome) do
    call = Map.fetch!(state.calls, pid)
    Process.cancel_timer(call.timer)
    report(call.span, outcome)
    put_in(state.calls[pid].settled, true)
  end

  defp exited(state, pid, reason) do
    {call, calls} = Map.pop(state.calls, pid)
    state = %{state | calls: calls}

    # A tool's own raise or throw is an outcome (a retry): this is an exit
    # signal from elsewhere. Should it have come after the call answered
    # (before it told the runner), the claim keeps this answer from going
    # out too.
    if not call.settled do
      Process.cancel_timer(call.timer)
      Logger.warning("tool #{call.name}: its process exited: " <> format_exit(reason))
      outcome = {:retry, "The tool crashed: #{crash_text(reason)}"}
      answer(call, outcome)
      report(call.span, outcome)
    end

    state
  end

  defp timed_out(state, pid, ms) do
    call = Map.fetch!(state.calls, pid)
    outcome = {:retry, "The tool did not answer within #{ms} ms."}

    if not call.settled and answer(call, outcome) == :ok do
      Process.exit(pid, :kill)
      report(call.span, outcome)
      put_in(state.calls[pid].settled, true)
    else
      # It answered as the timer fired: its message is on its way.
      state
    end
  end

  # Answers the call, unless it was answered already (`:claimed`). Every
  # outcome reaches the model: one the NIF refuses (a value with no JSON
  # form, anything over the message size limit) is replaced by a short
  # retry prompt that says why.
  defp answer(call, outcome) do
    case send_result(call, outcome) do
      {:error, %Error{message: message}} ->
        what =
          case outcome do
            {:ok, _} -> "result"
            {:retry, _} -> "error message"
            {:failed, _} -> "failure message"
          end

        Logger.warning("tool #{call.name}: its #{what} cannot be sent to the model: #{message}")
        retry = {:retry, "The tool's #{what} cannot be sent (#{message})."}
        Native.run_tool_result(call.handle, call.request_id, retry, call.claim)

      answered ->
        answered
    end
  end

  # The NIF encodes the outcome as JSON, on a dirty scheduler only when it
  # is not surely small (see SynapseCore.JSON).
  defp send_result(%{handle: handle, request_id: id, claim: claim}, outcome) do
    if SynapseCore.JSON.small?(outcome),
      do: Native.run_tool_result(handle, id, outcome, claim),
      else: Native.run_tool_result_dirty(handle, id, outcome, claim)
  end

  # What the model is told of a call's process that an exit signal ended:
  # an exception's message, never its stacktrace (whose top frame may hold
  # the arguments of the failing call); the rest is for the log.
  defp crash_text({reason, [{_, _, _, _} | _] = stacktrace}),
    do: banner(Exception.normalize(:error, reason, stacktrace))

  defp crash_text(reason) when is_atom(reason), do: Exception.format_exit(reason)
  defp crash_text(_reason), do: "its process exited (the reason is in the application's log)"

  # An exit reason for the log, with arities for the arguments in its stacktrace.
  defp format_exit({reason, [{_, _, _, _} | _] = stacktrace}),
    do: Exception.format_exit({reason, arities(stacktrace)})

  defp format_exit(reason), do: Exception.format_exit(reason)

  defp arities(stacktrace) do
    Enum.map(stacktrace, fn
      {module, function, args, location} when is_list(args) ->
        {module, function, length(args), location}

      entry ->
        entry
    end)
  end

  defp stop_calls(state) do
    Approval.run_ended(state.approvals)
    for {pid, _call} <- state.calls, do: Process.exit(pid, :kill)
    :ok
  end

  @doc false
  # Runs one call; anything that goes wrong is a retry message for the model
  # (a failure when the tool says so: `{:failed, reason}`).
  @spec execute(Tool.t(), term(), Context.t()) ::
          {:ok, term()} | {:retry, String.t()} | {:failed, String.t()}
  def execute(%Tool{} = tool, args, context) do
    with {:ok, args} <- arguments(tool, args) do
      tool |> invoke(args, context) |> outcome(tool)
    end
  end

  defp arguments(tool, args) do
    case Schema.validate(tool.parameters, args) do
      :ok when tool.fields != nil ->
        {:ok, Schema.cast(tool.fields, args)}

      :ok ->
        {:ok, args}

      {:error, problems} ->
        {:retry,
         "Invalid arguments for the tool #{tool.name}: #{Enum.join(problems, "; ")}. " <>
           "Call it again with arguments that match its parameters."}
    end
  end

  defp invoke(%Tool{function: function}, args, _context) when is_function(function, 1),
    do: guarded(fn -> function.(args) end)

  defp invoke(%Tool{function: function}, args, context),
    do: guarded(fn -> function.(args, context) end)

  defp guarded(call) do
    {:returned, call.()}
  rescue
    exception -> {:raised, exception, __STACKTRACE__}
  catch
    kind, reason -> {:raised, {kind, reason}, __STACKTRACE__}
  end

  defp outcome({:returned, {:ok, value}}, _tool), do: {:ok, value}
  defp outcome({:returned, {:error, reason}}, _tool), do: {:retry, reason_text(reason)}
  defp outcome({:returned, {:failed, reason}}, _tool), do: {:failed, reason_text(reason)}
  defp outcome({:returned, value}, _tool), do: {:ok, value}

  defp outcome({:raised, exception, stacktrace}, tool) do
    text =
      case exception do
        {kind, reason} -> Exception.format_banner(kind, reason)
        exception -> banner(exception)
      end

    Logger.warning(
      "tool #{tool.name} raised: " <>
        text <> "\n" <> Exception.format_stacktrace(arities(stacktrace))
    )

    {:retry, "The tool failed: #{text}"}
  end

  # An exception as the model is told of it: its type and message.
  defp banner(exception), do: "** (#{inspect(exception.__struct__)}) #{reason_text(exception)}"

  defp reason_text(reason) when is_binary(reason), do: text(reason)
  defp reason_text(%{__exception__: true} = exception), do: text(Exception.message(exception))
  defp reason_text(reason), do: inspect(reason)

  # Retry prompts are text: bytes that are not UTF-8 are shown escaped, as
  # `inspect/1` writes them, rather than lost or crashing the call.
  defp text(binary) do
    if String.valid?(binary), do: binary, else: inspect(binary, binaries: :as_binaries)
  end
end
