defmodule SynapseCore.JSON do
  @moduledoc """
  The JSON conversion Synapse applies to every dynamic payload (model
  settings, deps, tool arguments and results, structured output, a message
  history given as a list of maps, `SynapseCore.Messages.decode/1`),
  exposed for code that wants the same forms.

  Encoding: `nil` is null, booleans are booleans, other atoms are strings,
  integers (of any size: JSON numbers have none) and floats are numbers,
  binaries must be UTF-8, lists are arrays and maps (atom or string keys)
  are objects. Tuples, pids, references and functions have no JSON form,
  and a map with two keys of one name (`:a` and `"a"`) is refused rather
  than losing one value. Data nested deeper than 128 levels is refused.

  Decoding: objects become maps with *string* keys (no atom is ever created
  from decoded data), null becomes `nil`, and integers stay integers
  whatever their size (never floats). `NaN` and `Infinity`, which Python
  writes but JSON and Elixir floats do not have, are an `:unrepresentable`
  error.

      iex> {:ok, json} = SynapseCore.JSON.encode(%{a: [1, 2.5, nil, true]})
      iex> json
      ~s({"a":[1,2.5,null,true]})
      iex> SynapseCore.JSON.decode(json)
      {:ok, %{"a" => [1, 2.5, nil, true]}}
      iex> {:error, %SynapseCore.Error{kind: :invalid_argument}} = SynapseCore.JSON.encode({:a, :tuple})
      iex> {:ok, json} = SynapseCore.JSON.encode(%{big: 2 ** 70})
      iex> SynapseCore.JSON.decode(json)
      {:ok, %{"big" => 1180591620717411303424}}
      iex> {:error, %SynapseCore.Error{kind: :invalid_argument}} = SynapseCore.JSON.encode(%{:a => 1, "a" => 2})
      iex> {:error, %SynapseCore.Error{kind: :unrepresentable}} = SynapseCore.JSON.decode(~s({"x": NaN}))
  """

  alias SynapseCore.{Error, Native}

  @doc "Encodes `term` as JSON."
  @spec encode(term()) :: {:ok, String.t()} | {:error, Error.t()}
  def encode(term), do: Native.json_encode(term)

  @doc "Decodes JSON."
  @spec decode(binary()) :: {:ok, term()} | {:error, Error.t()}
  def decode(json) when is_binary(json), do: Native.json_decode(json)
end
