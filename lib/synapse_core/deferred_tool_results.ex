defmodule SynapseCore.DeferredToolResults do
  @moduledoc """
  The decisions that resume a run which ended with a
  `SynapseCore.DeferredToolRequests`: pydantic-ai's `DeferredToolResults`,
  given as a run's `deferred_tool_results:` option, together with that
  run's result as `message_history:`.

  A map (or keyword list) with any of:

    * `:approvals` - `%{tool_call_id => decision}` for the calls in the
      requests' `approvals`, a decision being one of
        * `true` or `:approve` - run the call as the model made it;
        * `{:approve, args}` - run it with these arguments instead (a map);
        * `false` or `:deny` - do not run it; the model is told it was
          denied (pydantic-ai's default message);
        * `{:deny, message}` - do not run it; the model is told `message`;
    * `:calls` - `%{tool_call_id => outcome}` for the calls in the requests'
      `calls`, an outcome being one of
        * `{:ok, value}` - the call's return value (any term with a JSON form);
        * `{:retry, message}` - a retry prompt for the model (`ModelRetry`);
        * `{:failed, message}` - a failure the model sees (`ToolFailed`);
    * `:metadata` - `%{tool_call_id => map}`, what the tool gets as
      `ctx.tool_call_metadata` when it runs.

  Every deferred call needs its decision or outcome; an id that is not one
  of the run's deferred calls, or a missing one, fails the run with
  `:invalid_argument` (pydantic-ai's own check) and changes nothing: the
  same history can be resumed again with the right decisions.

      deferred_tool_results: %{
        approvals: %{"call_1" => true, "call_2" => {:deny, "Not on Fridays."}},
        calls: %{"call_3" => {:ok, %{"status" => "shipped"}}}
      }
  """

  @type decision :: boolean() | :approve | :deny | {:approve, map()} | {:deny, String.t()}
  @type outcome :: {:ok, term()} | {:retry, String.t()} | {:failed, String.t()}

  @type t :: %{
          optional(:approvals) => %{String.t() => decision()},
          optional(:calls) => %{String.t() => outcome()},
          optional(:metadata) => %{String.t() => map()}
        }

  @keys [:approvals, :calls, :metadata]

  @doc false
  # The option's cast: nil, or the normalised form the NIF takes,
  # `%{approvals: [{id, {:approve, args | nil} | {:deny, message | nil}}],
  # calls: [{id, outcome}], metadata: [{id, map}]}`.
  @spec cast(term()) :: {:ok, map() | nil} | {:error, String.t()}
  def cast(nil), do: {:ok, nil}

  def cast(results) when is_list(results) do
    if Keyword.keyword?(results), do: cast(Map.new(results)), else: cast(:not_a_map)
  end

  def cast(results) when is_map(results) do
    with :ok <- known_keys(results),
         {:ok, approvals} <- entries(results, :approvals, &decision/1),
         {:ok, calls} <- entries(results, :calls, &outcome/1),
         {:ok, metadata} <- entries(results, :metadata, &metadata/1) do
      {:ok, %{approvals: approvals, calls: calls, metadata: metadata}}
    end
  end

  def cast(_other), do: {:error, "expected a map with :approvals, :calls and :metadata"}

  defp known_keys(results) do
    case Map.keys(results) -- @keys do
      [] -> :ok
      unknown -> {:error, "unknown keys #{inspect(unknown)} (expected #{inspect(@keys)})"}
    end
  end

  defp entries(results, key, cast) do
    case Map.get(results, key, %{}) do
      entries when is_map(entries) ->
        Enum.reduce_while(entries, {:ok, []}, fn {id, value}, {:ok, acc} ->
          with true <- text?(id) || {:error, "tool call ids are strings (UTF-8)"},
               {:ok, value} <- cast.(value) do
            {:cont, {:ok, [{id, value} | acc]}}
          else
            {:error, problem} -> {:halt, {:error, "#{key} #{inspect(id)}: #{problem}"}}
          end
        end)
        |> case do
          {:ok, list} -> {:ok, Enum.reverse(list)}
          error -> error
        end

      _other ->
        {:error, "#{inspect(key)} must be a map of tool call ids"}
    end
  end

  @doc false
  # A decision on one call, normalised: {:approve, args | nil} or {:deny, message | nil}.
  @spec decision(term()) ::
          {:ok, {:approve, map() | nil} | {:deny, String.t() | nil}} | {:error, String.t()}
  def decision(approve) when approve in [true, :approve], do: {:ok, {:approve, nil}}
  def decision(deny) when deny in [false, :deny], do: {:ok, {:deny, nil}}
  def decision({:approve, args}) when is_map(args), do: {:ok, {:approve, args}}

  def decision({:deny, message}) when is_binary(message) do
    if String.valid?(message), do: {:ok, {:deny, message}}, else: {:error, "a message is UTF-8"}
  end

  def decision(_other),
    do:
      {:error,
       "a decision is true, false, :approve, :deny, {:approve, args_map} or {:deny, message}"}

  defp outcome({:ok, _value} = outcome), do: {:ok, outcome}

  defp outcome({kind, message} = outcome) when kind in [:retry, :failed] and is_binary(message) do
    if String.valid?(message), do: {:ok, outcome}, else: {:error, "a message is UTF-8"}
  end

  defp outcome(_other),
    do: {:error, "an outcome is {:ok, value}, {:retry, message} or {:failed, message}"}

  defp text?(id), do: is_binary(id) and String.valid?(id)

  defp metadata(map) when is_map(map), do: {:ok, map}
  defp metadata(_other), do: {:error, "metadata is a map"}
end
