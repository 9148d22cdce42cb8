defmodule SynapseCore.Approval do
  @moduledoc """
  A tool call waiting, during its run, for a person's decision: what a
  run's `:approver` receives (see "Human in the loop" in `SynapseCore.Agent`).

  The approver gets `{:synapse_approval, %SynapseCore.Approval{}}` for each
  call of the run that needs approval (a Python tool with
  `requires_approval=True` or raising `ApprovalRequired`, an Elixir tool
  with `requires_approval: true`), and decides it with
  `SynapseCore.Agent.approve/3` or `SynapseCore.Agent.deny/3`, from any
  process on any connected node. The call waits meanwhile; the run goes
  on once every call the model made at that step is decided.

  Once a request is settled, every process it was sent to gets
  `{:synapse_approval_closed, id, outcome}`, `outcome` being
  `{:approved, args | nil}`, `{:denied, message | nil}`, `:timed_out` (the
  run's `:approval_timeout` passed: the call was denied) or `:run_ended`
  (the run finished, failed, timed out or was cancelled first), so that
  every screen showing it can take it down.

  Fields:

    * `id` - a string naming the request across the cluster (for a UI's
      element ids, and `:synapse_approval_closed`);
    * `agent` - the agent's name;
    * `tool_name`, `args` - the call as the model made it (`args` decoded
      from JSON with string keys; the raw text when the model's JSON is
      malformed);
    * `tool_call_id` - the model's id of the call;
    * `metadata` - what the tool gave `ApprovalRequired(metadata=...)`
      (decoded JSON; `%{}` for `metadata={}`), or `nil` when it gave none;
    * `runner`, `request_id` - where the decision goes (for
      `SynapseCore.Agent.approve/3`; not for display).
  """

  require Logger

  alias SynapseCore.{DeferredToolResults, Error, Native}

  @type t :: %__MODULE__{
          id: String.t(),
          agent: term(),
          tool_name: String.t(),
          tool_call_id: String.t(),
          args: term(),
          metadata: map() | nil,
          runner: pid(),
          request_id: String.t()
        }

  @enforce_keys [:id, :agent, :tool_name, :tool_call_id, :args, :runner, :request_id]
  defstruct [:id, :agent, :tool_name, :tool_call_id, :args, :runner, :request_id, metadata: nil]

  @typedoc """
  Who decides a run's approvals: a pid (on any node), a registered name
  (of the caller's node, or `{name, node}`), `{:global, name}`,
  `{:via, module, name}`, or `{:pg, group}` / `{:pg, scope, group}` (every
  member of a `:pg` group, on any node, gets each request; the first
  decision wins).
  """
  @type approver ::
          pid()
          | atom()
          | {atom(), node()}
          | {:global, term()}
          | {:via, module(), term()}
          | {:pg, term()}
          | {:pg, atom(), term()}

  @doc false
  # The cast of a run's :approver: a name of this node is pinned to it, so
  # that a run relayed to another node still asks here.
  @spec cast_approver(term()) :: {:ok, approver() | nil} | {:error, String.t()}
  def cast_approver(nil), do: {:ok, nil}
  def cast_approver(pid) when is_pid(pid), do: {:ok, pid}
  # Atoms no process can be registered under (Process.register/2 refuses
  # them): `approver: true` would otherwise deny every call, nobody being
  # there to ask, instead of saying the option is wrong.
  def cast_approver(name) when name in [true, false, :undefined], do: not_a_name(name)
  def cast_approver(name) when is_atom(name), do: {:ok, {name, node()}}

  def cast_approver({name, node}) when name in [nil, true, false, :undefined] and is_atom(node),
    do: not_a_name(name)

  # {:global, _} and {:pg, _} before {name, node}: their second element may be an atom.
  def cast_approver({:global, _name} = dest), do: {:ok, dest}
  def cast_approver({:pg, group}), do: {:ok, {:pg, :pg, group}}
  def cast_approver({:via, module, _name} = dest) when is_atom(module), do: {:ok, dest}
  def cast_approver({name, node} = dest) when is_atom(name) and is_atom(node), do: {:ok, dest}
  def cast_approver({:pg, scope, _group} = dest) when is_atom(scope), do: {:ok, dest}
  def cast_approver(_other), do: {:error, approver_description()}

  defp not_a_name(name) do
    {:error,
     "#{inspect(name)} cannot be a registered name (nil, the default, is no approver); " <>
       "expected " <> approver_description()}
  end

  @doc false
  def approver_description,
    do:
      "a pid, a registered name, {name, node}, {:global, name}, {:via, module, name}, " <>
        "{:pg, group} or {:pg, scope, group}"

  ## The approver's side

  @decide_schema [
    timeout: [
      type: {:timeout, 1},
      default: 5_000,
      doc: """
      milliseconds to wait for the run to take the decision (the run may be
      on another node); `{:error, %SynapseCore.Error{kind: :timeout}}`
      after that.
      """
    ]
  ]

  @doc false
  @spec decide_schema() :: SynapseCore.Options.schema()
  def decide_schema, do: @decide_schema

  @doc false
  # Sends a decision to the run and waits for it to be taken.
  @spec decide(t(), term(), keyword()) :: :ok | {:error, Error.t()}
  def decide(%__MODULE__{runner: runner, request_id: request_id}, decision, opts) do
    %{timeout: timeout} = SynapseCore.Options.validate!(opts, @decide_schema, "a decision")

    case DeferredToolResults.decision(decision) do
      {:ok, decision} ->
        # The answer goes to the monitor's alias, as a GenServer.call's
        # does: once we stop waiting, a late answer is dropped rather than
        # left in the caller's mailbox (a LiveView with no clause for it
        # would crash).
        ref = :erlang.monitor(:process, runner, alias: :demonitor)
        send(runner, {:synapse_approval_decide, {ref, ref}, request_id, decision})

        receive do
          {^ref, reply} ->
            Process.demonitor(ref, [:flush])
            reply

          {:DOWN, ^ref, :process, _, _} ->
            {:error, over(request_id)}
        after
          timeout ->
            Process.demonitor(ref, [:flush])

            # An answer that arrived as the alias went away is the answer.
            receive do
              {^ref, reply} -> reply
            after
              0 ->
                {:error,
                 Error.new(:timeout, "the run did not take the decision within #{timeout} ms")}
            end
        end

      {:error, problem} ->
        {:error, Error.new(:invalid_argument, problem)}
    end
  end

  def decide(other, _decision, _opts),
    do:
      {:error,
       Error.new(:invalid_argument, "expected a %SynapseCore.Approval{}, got: #{inspect(other)}")}

  defp over(request_id) do
    Error.new(
      :invalid_argument,
      "approval request #{inspect(request_id)} cannot be decided: its run is over",
      %{reason: :run_ended}
    )
  end

  ## The run's side (SynapseCore.ToolRunner)

  # What the model is told of a call no process can decide.
  @nobody "Nobody can approve this tool call."

  @doc false
  # The approvals of one run: its approver, the request timeout, what is
  # pending (request id => %{approval, sent_to, timer, monitors}), what was
  # settled, and the monitors of the processes asked (ref => request id).
  @spec state(approver() | nil, timeout()) :: map()
  def state(approver, timeout),
    do: %{
      approver: approver,
      timeout: timeout,
      pending: %{},
      settled: MapSet.new(),
      watched: %{}
    }

  @doc false
  # A request from the run: to the approver, or denied at once when nobody
  # can receive it.
  @spec request(map(), map(), reference(), term()) :: map()
  def request(approvals, request, handle, agent) do
    approval = %__MODULE__{
      # This node's hash and a number unique on it: no two requests of a
      # cluster share one, and it is fit for an HTML id.
      id:
        Integer.to_string(:erlang.phash2(node()), 36) <>
          "-" <> Integer.to_string(:erlang.unique_integer([:positive]), 36),
      agent: agent,
      tool_name: request.tool_name,
      tool_call_id: request.tool_call_id,
      args: request.args,
      metadata: request.metadata,
      runner: self(),
      request_id: request.request_id
    }

    case deliver(approvals.approver, {:synapse_approval, approval}) do
      [] ->
        Logger.warning(
          "tool #{request.tool_name}: nobody can approve the call " <>
            "(no process is #{inspect(approvals.approver)}); it is denied"
        )

        send_decision(handle, request.request_id, {:deny, @nobody})
        update_in(approvals.settled, &MapSet.put(&1, request.request_id))

      sent_to ->
        timer =
          if approvals.timeout != :infinity,
            do:
              Process.send_after(
                self(),
                {:synapse_approval_timeout, request.request_id},
                approvals.timeout
              )

        # Each process asked is watched: once none is left, nobody can
        # decide (a dead pid, say, or a screen closed), and the call is
        # denied then rather than waiting for the timeout.
        monitors = Enum.map(sent_to, &Process.monitor/1)
        watched = Map.new(monitors, &{&1, request.request_id})
        entry = %{approval: approval, sent_to: sent_to, timer: timer, monitors: monitors}

        %{
          approvals
          | pending: Map.put(approvals.pending, request.request_id, entry),
            watched: Map.merge(approvals.watched, watched)
        }
    end
  end

  @doc false
  # A decision from an approver; the answer goes back to `from`: `{to, ref}`,
  # `to` being the decider's alias (`decide/3`).
  @spec decide_request(map(), {reference(), reference()}, String.t(), term(), reference()) ::
          map()
  def decide_request(approvals, {to, ref}, request_id, decision, handle) do
    case Map.fetch(approvals.pending, request_id) do
      {:ok, _entry} ->
        case send_decision(handle, request_id, decision) do
          :ok ->
            send(to, {ref, :ok})
            settle(approvals, request_id, closed(decision))

          {:error, %Error{}} = error ->
            # Refused (arguments with no JSON form, over the size limit):
            # the request stays pending for a decision that can be sent.
            send(to, {ref, error})
            approvals
        end

      :error ->
        reason =
          if MapSet.member?(approvals.settled, request_id),
            do: :already_settled,
            else: :unknown_request

        message =
          case reason do
            :already_settled -> "approval request #{inspect(request_id)} was already settled"
            :unknown_request -> "the run has no approval request #{inspect(request_id)}"
          end

        send(to, {ref, {:error, Error.new(:invalid_argument, message, %{reason: reason})}})
        approvals
    end
  end

  @doc false
  # The request's own timeout passed: denied.
  @spec expire(map(), String.t(), reference()) :: map()
  def expire(approvals, request_id, handle) do
    if Map.has_key?(approvals.pending, request_id) do
      message = "Nobody decided on this tool call within #{approvals.timeout} ms."
      :ok = send_decision(handle, request_id, {:deny, message})
      settle(approvals, request_id, :timed_out)
    else
      approvals
    end
  end

  @doc false
  # A process asked to decide is gone (`ref`, its monitor): the request is
  # denied when it was the last one that could decide it.
  @spec asked_down(map(), reference(), reference()) :: map()
  def asked_down(approvals, ref, handle) do
    {request_id, watched} = Map.pop(approvals.watched, ref)
    approvals = %{approvals | watched: watched}
    %{approval: approval, monitors: monitors} = entry = Map.fetch!(approvals.pending, request_id)

    case List.delete(monitors, ref) do
      [] ->
        Logger.warning(
          "tool #{approval.tool_name}: every process asked to approve the call " <>
            "exited before deciding; it is denied"
        )

        :ok = send_decision(handle, request_id, {:deny, @nobody})
        settle(approvals, request_id, {:denied, @nobody})

      monitors ->
        put_in(approvals.pending[request_id], %{entry | monitors: monitors})
    end
  end

  @doc false
  # The run is over: every request still pending is closed.
  @spec run_ended(map()) :: :ok
  def run_ended(approvals) do
    Enum.each(Map.keys(approvals.pending), &settle(approvals, &1, :run_ended))
  end

  defp settle(approvals, request_id, outcome) do
    {%{approval: approval, sent_to: sent_to, timer: timer, monitors: monitors}, pending} =
      Map.pop(approvals.pending, request_id)

    if timer, do: Process.cancel_timer(timer)
    Enum.each(monitors, &Process.demonitor(&1, [:flush]))
    Enum.each(sent_to, &send(&1, {:synapse_approval_closed, approval.id, outcome}))

    %{
      approvals
      | pending: pending,
        settled: MapSet.put(approvals.settled, request_id),
        watched: Map.drop(approvals.watched, monitors)
    }
  end

  defp closed({:approve, args}), do: {:approved, args}
  defp closed({:deny, message}), do: {:denied, message}

  defp send_decision(handle, request_id, decision),
    do: Native.run_approval_result(handle, request_id, decision)

  # Sends `message` to the approver; returns the destinations it went to
  # (pids or names), [] when there is none.
  defp deliver({:pg, scope, group}, message) do
    members =
      try do
        :pg.get_members(scope, group)
      rescue
        # The scope is not started on this node.
        ArgumentError -> []
      end

    Enum.each(members, &send(&1, message))
    members
  end

  defp deliver(pid, message) when is_pid(pid) do
    send(pid, message)
    [pid]
  end

  defp deliver({name, node} = dest, message)
       when is_atom(name) and is_atom(node) and name != :global do
    # A name of another node is resolved there; a local one must exist.
    if node == node() and Process.whereis(name) == nil do
      []
    else
      send(dest, message)
      [dest]
    end
  end

  defp deliver(dest, message) do
    # {:global, _} and {:via, _, _}: resolved now, as GenServer does.
    case GenServer.whereis(dest) do
      pid when is_pid(pid) -> deliver(pid, message)
      _ -> []
    end
  end
end
