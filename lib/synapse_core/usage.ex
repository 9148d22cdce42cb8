defmodule SynapseCore.Usage do
  @moduledoc """
  What a run used, as pydantic-ai counts it (its `RunUsage`): requests, tool
  calls, tokens, cost, and the usage of each model response.

    * `requests`, `tool_calls` - the model responses of the run and the tool
      calls that succeeded (what `usage_limits:`' `request_limit` and
      `tool_calls_limit` bound).
    * `input_tokens`, `output_tokens`, `cache_read_tokens`,
      `cache_write_tokens`, `cache_write_1h_tokens`, `input_audio_tokens`, `cache_audio_read_tokens`,
      `output_audio_tokens`, `output_reasoning_tokens` - token counts, as the
      provider reports them (the audio, cache and reasoning counts are
      included in the input and output counts).
    * `audio_seconds` - seconds of audio billed, for models priced by
      duration (a float).
    * `unmeasured_requests` - responses that carried no usage: when it is
      not 0, the counts and the cost are lower bounds.
    * `details` - the provider's other counts, a map with string keys.
    * `cost` - the cost in USD, as pydantic-ai computes it with genai-prices
      (or as the Pydantic AI Gateway reports it): the exact decimal, as a
      string (`"0.0001525"`; `Decimal.new/1` takes it). `nil` when the model
      or its provider cannot be priced (`"test"`, function models, a model
      newer than the installed prices), which is not a zero cost.
      `usage_limits: [cost_limit: ...]` bounds it.
    * `by_request` - the usage of each model response of the run, in order:
      `SynapseCore.RequestUsage` structs (the model that answered, and its
      response's usage as a `SynapseCore.Usage`).

  A model that reports nothing (pydantic-ai's `TestModel` estimates) gives
  estimates or zeros. A run that fails with `:timeout` or `:cancelled`
  carries the usage of what it did in its error's `details.usage`; no
  other failure does, as pydantic-ai gives none for them.

      {:ok, result} = SynapseCore.Agent.run_sync(:support, "Hi")
      result.usage.input_tokens + result.usage.output_tokens

  `inspect/2` shows the four main counts, the other counts that are not 0,
  and the cost when there is one:
  `#SynapseCore.Usage<input_tokens: 51, output_tokens: 4, requests: 1, tool_calls: 0>`.
  """

  @type t :: %__MODULE__{
          requests: non_neg_integer(),
          tool_calls: non_neg_integer(),
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
          cost: String.t() | nil,
          by_request: [SynapseCore.RequestUsage.t()]
        }

  defstruct requests: 0,
            tool_calls: 0,
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
            cost: nil,
            by_request: []

  defimpl Inspect do
    import Inspect.Algebra

    @always [:input_tokens, :output_tokens, :requests, :tool_calls]
    @when_counted [
      :cache_read_tokens,
      :cache_write_tokens,
      :cache_write_1h_tokens,
      :input_audio_tokens,
      :cache_audio_read_tokens,
      :output_audio_tokens,
      :output_reasoning_tokens,
      :audio_seconds,
      :unmeasured_requests
    ]

    def inspect(usage, opts) do
      counts =
        for key <- @always ++ @when_counted,
            count = Map.fetch!(usage, key),
            key in @always or count != 0,
            do: {key, count}

      fields = if usage.cost, do: counts ++ [cost: usage.cost], else: counts

      container_doc("#SynapseCore.Usage<", fields, ">", opts, &field/2,
        separator: ",",
        break: :flex
      )
    end

    defp field({key, value}, opts), do: concat(["#{key}: ", to_doc(value, opts)])
  end
end
