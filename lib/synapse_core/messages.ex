defmodule SynapseCore.Messages do
  @moduledoc """
  A conversation's message history, as pydantic-ai wrote it.

  `json` holds exactly the bytes of pydantic-ai's `all_messages_json()` (or
  `new_messages_json()`): Synapse never decodes and re-encodes them, so a
  history given back as `message_history:` reaches the agent byte for byte
  as Python would pass `result.all_messages()`. The provider receives the
  same request on every turn (same key order, same numbers), which keeps
  token counts equal to Python's and provider prompt caches warm. `count` is
  the number of messages.

  Store `json` as it is (a binary) and rebuild the struct with
  `from_json/1`. To read the messages from Elixir, `decode/1` gives
  pydantic-ai's JSON form as Elixir data (maps with string keys, integers
  of any size, never atoms); that view is for reading only.

      {:ok, result} = SynapseCore.Agent.run_sync(:support, "Hi")
      result.messages                      #=> #SynapseCore.Messages<2 messages, 312 bytes>
      {:ok, [request, response]} = SynapseCore.Messages.decode(result.messages)
      request["parts"]                     #=> [%{"part_kind" => "user-prompt", ...}]
      SynapseCore.Agent.run_sync(:support, "And then?", message_history: result.messages)
  """

  alias SynapseCore.{Error, JSON, Native}

  @type t :: %__MODULE__{json: binary(), count: non_neg_integer()}

  @enforce_keys [:json, :count]
  defstruct [:json, :count]

  @doc """
  The messages as Elixir data: pydantic-ai's JSON form decoded as
  `SynapseCore.JSON.decode/1` does (objects are maps with string keys).
  """
  @spec decode(t()) :: {:ok, [map()]} | {:error, Error.t()}
  def decode(%__MODULE__{json: json}), do: JSON.decode(json)

  @doc "Like `decode/1`, but raises `SynapseCore.Error` on failure."
  @spec decode!(t()) :: [map()]
  def decode!(%__MODULE__{} = messages) do
    case decode(messages) do
      {:ok, list} -> list
      {:error, error} -> raise error
    end
  end

  @doc """
  A history from pydantic-ai's JSON of a list of messages (e.g. stored from
  an earlier `messages.json`, or written by Python's
  `result.all_messages_json()`). Checks that it is a JSON array; the worker
  validates the messages themselves when the history is used.

      iex> {:ok, messages} = SynapseCore.Messages.from_json("[]")
      iex> messages.count
      0
      iex> {:error, %SynapseCore.Error{kind: :invalid_argument}} = SynapseCore.Messages.from_json("{}")
  """
  @spec from_json(binary()) :: {:ok, t()} | {:error, Error.t()}
  def from_json(json) when is_binary(json), do: Native.messages_slice(json, 0)

  @doc """
  The messages from index `from` on (0-based), as pydantic-ai's
  `all_messages()[from:]` would be written: each message's bytes unchanged.
  Raises `SynapseCore.Error` (`:invalid_argument`) for a struct whose `json`
  is not a JSON array, which only one built by hand can be (use
  `from_json/1`).
  """
  @spec slice(t(), non_neg_integer()) :: t()
  def slice(%__MODULE__{} = messages, 0), do: messages

  def slice(%__MODULE__{json: json}, from) when is_integer(from) and from >= 0 do
    case Native.messages_slice(json, from) do
      {:ok, messages} -> messages
      {:error, error} -> raise error
    end
  end

  defimpl Inspect do
    def inspect(%{count: count, json: json}, _opts) do
      noun = if count == 1, do: "message", else: "messages"
      "#SynapseCore.Messages<#{count} #{noun}, #{byte_size(json)} bytes>"
    end
  end
end
