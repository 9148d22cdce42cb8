defmodule SynapseCore.Result do
  @moduledoc """
  The result of an agent run.

    * `output` - a string for agents whose output is text; for agents with a
      structured output type, the output decoded from JSON: maps with
      *string* keys, lists, numbers, booleans and `nil`. String keys because
      the keys come from the Python side and atoms are never created from
      external data (they are not garbage collected).
    * `usage` - a `SynapseCore.Usage`.
    * `messages` - the whole conversation so far (the history that was given
      plus this run's messages) in pydantic-ai's JSON form, decoded the same
      way as `output`. Pass it as `message_history:` to continue the
      conversation; it can be stored as is.
    * `run_id` - pydantic-ai's id of this run.
  """

  alias SynapseCore.Usage

  @type t :: %__MODULE__{
          output: String.t() | term(),
          usage: Usage.t(),
          messages: [map()],
          run_id: String.t()
        }

  defstruct output: nil, usage: %Usage{}, messages: [], run_id: ""
end
