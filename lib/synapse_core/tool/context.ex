defmodule SynapseCore.Tool.Context do
  @moduledoc """
  What a tool's function knows about the call it serves.

    * `agent` - the agent's name
    * `run_id` - pydantic-ai's id of the run
    * `tool_call_id` - the model's id of this call
    * `retry` - how many times this call was retried so far
    * `max_retries` - how many retries the tool has (its `:max_retries`,
      or the agent's default): pydantic-ai's `ctx.max_retries`
    * `deps` - the `deps:` term given to the run (`nil` if none): how a
      caller hands its tools what they need (a user id, a repo, ...)
  """

  @type t :: %__MODULE__{
          agent: term(),
          run_id: String.t(),
          tool_call_id: String.t(),
          retry: non_neg_integer(),
          max_retries: non_neg_integer(),
          deps: term()
        }

  defstruct [:agent, :run_id, :tool_call_id, :deps, retry: 0, max_retries: 0]
end
