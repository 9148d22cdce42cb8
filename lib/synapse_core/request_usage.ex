defmodule SynapseCore.RequestUsage do
  @moduledoc """
  The usage of one model response (pydantic-ai's `RequestUsage`), an entry
  of `SynapseCore.Usage`'s `by_request`: the model that answered
  (`model_name`, `provider_name`, as the response names them; `""` when it
  does not), its token counts, `details` and `cost`, with the meanings they
  have in `SynapseCore.Usage`.
  """

  @type t :: %__MODULE__{
          model_name: String.t(),
          provider_name: String.t(),
          input_tokens: non_neg_integer(),
          output_tokens: non_neg_integer(),
          cache_read_tokens: non_neg_integer(),
          cache_write_tokens: non_neg_integer(),
          cache_write_1h_tokens: non_neg_integer(),
          input_audio_tokens: non_neg_integer(),
          cache_audio_read_tokens: non_neg_integer(),
          output_audio_tokens: non_neg_integer(),
          output_reasoning_tokens: non_neg_integer(),
          audio_seconds: float(),
          unmeasured_requests: non_neg_integer(),
          details: %{optional(String.t()) => integer()},
          cost: String.t() | nil
        }

  defstruct model_name: "",
            provider_name: "",
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            input_audio_tokens: 0,
            cache_audio_read_tokens: 0,
            output_audio_tokens: 0,
            output_reasoning_tokens: 0,
            audio_seconds: 0.0,
            unmeasured_requests: 0,
            details: %{},
            cost: nil
end
