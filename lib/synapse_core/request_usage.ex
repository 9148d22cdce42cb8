defmodule SynapseCore.RequestUsage do
  @moduledoc """
  The usage of one model response (pydantic-ai's `ModelResponse.usage`, a
  `RequestUsage`), an entry of `SynapseCore.Usage`'s `by_request`:

    * `model_name`, `provider_name` - the model that answered, as the
      response names it (`""` when it does not).
    * `usage` - its token counts, `details` and `cost`, as a
      `SynapseCore.Usage` (`requests` 1, `tool_calls` 0, `by_request` empty).
  """

  @type t :: %__MODULE__{
          model_name: String.t(),
          provider_name: String.t(),
          usage: SynapseCore.Usage.t()
        }

  defstruct model_name: "", provider_name: "", usage: %SynapseCore.Usage{requests: 1}
end
