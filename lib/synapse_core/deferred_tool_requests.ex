defmodule SynapseCore.DeferredToolRequests do
  @moduledoc """
  The output of a run that ended with tool calls waiting for a decision:
  pydantic-ai's `DeferredToolRequests`.

  A run ends this way when the model called a tool that needs approval
  (`requires_approval=True` in Python, `requires_approval: true` for an
  Elixir tool, or a tool raising `ApprovalRequired`) or whose result comes
  from outside (a tool raising `CallDeferred`), and nothing decided during
  the run (no `:approver`). The agent's output type must allow it
  (`output_type=[str, DeferredToolRequests]`); the result's `output_type`
  is then `"DeferredToolRequests"`.

    * `approvals` - the calls waiting for approval;
    * `calls` - the calls waiting for an external result.

  Each is a `SynapseCore.DeferredToolRequests.Call`. Resume the run with the
  result as `message_history:` and the decisions as
  `deferred_tool_results:`, keyed by each call's `tool_call_id` (see
  `SynapseCore.DeferredToolResults`):

      {:ok, %{output: %SynapseCore.DeferredToolRequests{approvals: [call]}} = result} =
        SynapseCore.Agent.run_sync(:ops, "Delete the logs")

      SynapseCore.Agent.run_sync(:ops, "",
        message_history: result,
        deferred_tool_results: %{approvals: %{call.tool_call_id => true}}
      )
  """

  alias SynapseCore.DeferredToolRequests.Call

  @type t :: %__MODULE__{approvals: [Call.t()], calls: [Call.t()]}

  defstruct approvals: [], calls: []
end

defmodule SynapseCore.DeferredToolRequests.Call do
  @moduledoc """
  A tool call waiting for a decision (one of a
  `SynapseCore.DeferredToolRequests`'s lists).

    * `tool_call_id` - the id the decision is keyed by;
    * `tool_name`, `args` - the call as the model made it (`args` decoded
      from JSON, string keys; the raw text when the model's JSON is
      malformed);
    * `metadata` - what the tool gave `ApprovalRequired(metadata=...)` or
      `CallDeferred(metadata=...)`, decoded from JSON (`%{}` for
      `metadata={}`), or `nil` when it gave none;
    * `kind` - what it waits for: `:approval`, `:external` (a result from
      outside) or `:question` (an answer, `CallDeferred(kind="question")`).
  """

  @type t :: %__MODULE__{
          tool_call_id: String.t(),
          tool_name: String.t(),
          args: term(),
          metadata: map() | nil,
          kind: :approval | :external | :question | String.t()
        }

  @enforce_keys [:tool_call_id, :tool_name, :args, :kind]
  defstruct [:tool_call_id, :tool_name, :args, :kind, metadata: nil]
end
