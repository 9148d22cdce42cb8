defmodule SynapseCore.Usage do
  @moduledoc """
  What a run used, as pydantic-ai counts it (its `RunUsage`), summed over
  every model request of the run:

    * `input_tokens` - tokens sent to the model (the prompt, the history,
      tool definitions and results), cached ones included;
    * `output_tokens` - tokens the model generated;
    * `requests` - model requests made (one per model response; a run with
      tool calls makes several);
    * `tool_calls` - tool calls that ran (Python tools and Elixir tools);
    * `cache_read_tokens` - input tokens the provider read from its prompt
      cache (part of `input_tokens`; 0 when it reports none);
    * `cache_write_tokens` - input tokens the provider wrote to its prompt
      cache (part of `input_tokens`; 0 when it reports none).

  The counts are the provider's, as pydantic-ai reports them; a model that
  reports nothing (pydantic-ai's `TestModel` estimates) gives estimates or
  zeros. A run that fails with `:timeout` or `:cancelled` carries the usage
  of what it did in its error's `details.usage`; `:usage_limits` bounds it.

      {:ok, result} = SynapseCore.Agent.run_sync(:support, "Hi")
      result.usage.input_tokens + result.usage.output_tokens

  `inspect/2` leaves out the cache counts when they are 0:
  `#SynapseCore.Usage<input_tokens: 51, output_tokens: 4, requests: 1, tool_calls: 0>`.
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

  defimpl Inspect do
    import Inspect.Algebra

    @always [:input_tokens, :output_tokens, :requests, :tool_calls]
    @when_counted [:cache_read_tokens, :cache_write_tokens]

    def inspect(usage, opts) do
      fields =
        for key <- @always ++ @when_counted,
            count = Map.fetch!(usage, key),
            key in @always or count != 0,
            do: {key, count}

      container_doc("#SynapseCore.Usage<", fields, ">", opts, &field/2,
        separator: ",",
        break: :flex
      )
    end

    defp field({key, count}, opts), do: concat(["#{key}: ", to_doc(count, opts)])
  end
end
