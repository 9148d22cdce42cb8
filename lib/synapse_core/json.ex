defmodule SynapseCore.JSON do
  @moduledoc """
  The JSON conversion Synapse applies to every dynamic payload (message
  histories, model settings, tool arguments and results, structured
  output), exposed for code that wants the same forms, e.g. to store a
  conversation's `messages` as JSON.

  Encoding: `nil` is null, booleans are booleans, other atoms are strings,
  numbers are numbers, binaries must be UTF-8, lists are arrays and maps
  (atom or string keys) are objects. Tuples, pids, references and functions
  have no JSON form. Data nested deeper than 128 levels is refused.

  Decoding: objects become maps with *string* keys (no atom is ever created
  from decoded data) and null becomes `nil`.

      iex> {:ok, json} = SynapseCore.JSON.encode(%{a: [1, 2.5, nil, true]})
      iex> json
      ~s({"a":[1,2.5,null,true]})
      iex> SynapseCore.JSON.decode(json)
      {:ok, %{"a" => [1, 2.5, nil, true]}}
      iex> {:error, %SynapseCore.Error{kind: :invalid_argument}} = SynapseCore.JSON.encode({:a, :tuple})
  """

  alias SynapseCore.{Error, Native}

  @doc "Encodes `term` as JSON."
  @spec encode(term()) :: {:ok, String.t()} | {:error, Error.t()}
  def encode(term), do: Native.json_encode(term)

  @doc "Decodes JSON."
  @spec decode(binary()) :: {:ok, term()} | {:error, Error.t()}
  def decode(json) when is_binary(json), do: Native.json_decode(json)
end
