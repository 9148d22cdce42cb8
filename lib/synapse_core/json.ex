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

  # Each conversion runs in a NIF: on the caller's scheduler when the
  # payload is surely small (most are), since a dirty scheduler costs a
  # hand-off between threads each way, tens of µs of CPU; on a dirty one
  # otherwise, as a large payload may take longer than a scheduler slot.
  @small_terms 64
  @small_bytes 16 * 1024
  @max_small_integer 0xFFFF_FFFF_FFFF_FFFF

  @doc "Encodes `term` as JSON."
  @spec encode(term()) :: {:ok, String.t()} | {:error, Error.t()}
  def encode(term) do
    if small?(term), do: Native.json_encode(term), else: Native.json_encode_dirty(term)
  end

  @doc "Decodes JSON."
  @spec decode(binary()) :: {:ok, term()} | {:error, Error.t()}
  def decode(json) when byte_size(json) <= @small_bytes, do: Native.json_decode(json)
  def decode(json) when is_binary(json), do: Native.json_decode_dirty(json)

  @doc false
  # Whether `term` is surely quick to encode: at most @small_terms terms and
  # @small_bytes bytes of binaries, and no integer beyond 64 bits. The walk
  # stops as soon as a budget is spent, so it costs little whatever the term.
  @spec small?(term()) :: boolean()
  def small?(term), do: small?([term], @small_terms, @small_bytes)

  defp small?([], _terms, _bytes), do: true
  defp small?(_stack, 0, _bytes), do: false

  defp small?([term | stack], terms, bytes) do
    case term do
      [head | tail] ->
        small?([head, tail | stack], terms - 1, bytes)

      binary when is_binary(binary) ->
        byte_size(binary) <= bytes and small?(stack, terms - 1, bytes - byte_size(binary))

      map when is_map(map) ->
        map_size(map) < terms and small?(:maps.to_list(map) ++ stack, terms - 1, bytes)

      tuple when is_tuple(tuple) ->
        tuple_size(tuple) < terms and small?(Tuple.to_list(tuple) ++ stack, terms - 1, bytes)

      integer when is_integer(integer) ->
        abs(integer) <= @max_small_integer and small?(stack, terms - 1, bytes)

      _other ->
        small?(stack, terms - 1, bytes)
    end
  end
end
