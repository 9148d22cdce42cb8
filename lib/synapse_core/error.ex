defmodule SynapseCore.Error do
  # The kinds, their docs and the `kind` type come from the wire contract's
  # `ErrorKind` enum: the one list of kinds, shared with the Python worker
  # and the Rust client.
  @external_resource SynapseCore.Proto.path()
  @kinds (for {"ERROR_KIND_" <> name, _number, doc} <- SynapseCore.Proto.enum("ErrorKind") do
            {name |> String.downcase() |> String.to_atom(),
             String.replace_prefix(doc, "Client: ", "")}
          end)

  @moduledoc """
  The error every Synapse function returns (`{:error, %SynapseCore.Error{}}`)
  or raises (the `!` variants).

  `kind` says what happened, as one of a fixed set of atoms:

  #{Enum.map_join(@kinds, "\n", fn {kind, doc} -> "  * `#{inspect(kind)}` - #{doc}" end)}

  `message` is meant for humans. `details` is a map whose keys depend on the
  kind; errors that come from Python carry `:type` (the exception's class
  name), `:traceback` and `:grpc_status`. Also, by kind:

    * `:invalid_argument` from a Pydantic validation (of `deps:`, for
      example): `:errors`, a list of `%{"loc" => [...], "msg" => ...,
      "type" => ...}`, each `loc` a path of field names and indexes;
    * `:model_http_error`: `:status_code`, `:body` (the provider's error
      body, decoded when it is JSON), `:retry_after` (seconds, or `nil`),
      `:model_name`, `:provider_error_code`, `:provider_error_type`;
    * `:model_unavailable`: `:model_name` and `:phase` (`"connect"`,
      `"write"`, `"read"`, `"pool"` or `nil`).

  A run that fails once pydantic-ai's run began, whatever the kind, keeps
  what it did as a Python caller gets it back:

    * `:messages` - a `SynapseCore.Messages`, to resume from as
      `message_history:` (with a `nil` prompt the run goes on from its last
      request, as pydantic-ai's docs recover a failed run) or to see what
      led to the failure. For `:timeout` and `:cancelled`, pydantic-ai's
      `RunCancelled.all_messages()`; for any other failure
      (`:usage_limit_exceeded`, `:model_http_error`,
      `:output_validation_failed`, `:tool_failed`, a tool's
      `:python_error`, deps that fail to close after the run, ...), exactly
      the messages pydantic-ai's `capture_run_messages()` recorded of the
      run, the request it was answering included;
    * `:new_message_index` - where the run's own messages begin in them, as
      in `SynapseCore.Result`: `SynapseCore.Messages.slice(messages,
      new_message_index)` is what this run added (for `:timeout` and
      `:cancelled`, pydantic-ai's `RunCancelled.new_messages()`);
    * `:usage` (a `SynapseCore.Usage`, to bill) and `:run_id` - for
      `:timeout` and `:cancelled` only: pydantic-ai gives them for no other
      failure, and none is made up.

  A failure before the run began (deps that do not validate, an unknown
  agent, a request Synapse refuses) has none of these keys, nor has a
  run whose messages have no JSON form (a string UTF-8 cannot encode) or
  would make its failure larger than `:max_message_bytes`: its error is
  kept, and its message says that what the run did is not returned, and
  why.
  """

  @type kind :: unquote(Enum.reduce(Keyword.keys(@kinds), &{:|, [], [&1, &2]}))

  @type t :: %__MODULE__{kind: kind(), message: String.t(), details: map()}

  defexception [:kind, :message, details: %{}]

  @doc "Every kind, in the order the wire contract lists them."
  @spec kinds() :: [kind()]
  def kinds, do: unquote(Keyword.keys(@kinds))

  @impl true
  def message(%__MODULE__{kind: kind, message: message}), do: "(#{kind}) #{message}"

  @doc """
  Builds an error.

      iex> SynapseCore.Error.new(:timeout, "too slow")
      %SynapseCore.Error{kind: :timeout, message: "too slow", details: %{}}
  """
  @spec new(kind(), String.t(), map()) :: t()
  def new(kind, message, details \\ %{})
      when kind in unquote(Keyword.keys(@kinds)) and is_binary(message) do
    %__MODULE__{kind: kind, message: message, details: details}
  end
end
