defmodule SynapseCore.Usage do
  @moduledoc """
  Token and request counts of a run, as pydantic-ai reports them.
  """

  @type t :: %__MODULE__{
          input_tokens: non_neg_integer(),
          output_tokens: non_neg_integer(),
          requests: non_neg_integer(),
          tool_calls: non_neg_integer(),
          cache_read_tokens: non_neg_integer(),
          cache_write_tokens: non_neg_integer()
        }

  defstruct input_tokens: 0,
            output_tokens: 0,
            requests: 0,
            tool_calls: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0
end
