defmodule SynapseCore.Error do
  @moduledoc """
  The error every Synapse function returns (`{:error, %SynapseCore.Error{}}`)
  or raises (the `!` variants).

  `kind` says what happened, as one of a fixed set of atoms:

    * `:unknown_agent` - no agent is registered under that name
    * `:unavailable` - the agent exists but has no worker ready to serve
      (it is starting or restarting), or its worker cannot be reached.
      Transient: the agent keeps trying. `details.last_error`, when
      present, is why its last worker was lost
    * `:worker_exited` - the worker process exited while the call was in flight
    * `:timeout` - the call's `:timeout` elapsed; the run was cancelled
      (pydantic-ai's `RunTimedOut`)
    * `:cancelled` - the call was cancelled (`SynapseCore.Agent.cancel/1`); or
      the agent was stopped (`SynapseCore.stop_agent/1`) while its start
      waited for it
    * `:startup_failed` - a worker could not be started: the interpreter is
      missing, the agent's module does not import, ... Returned by the start
      of an agent, and by calls while the agent's workers cannot start for
      a reason that retrying cannot fix (`details.permanent` is then
      `true`; `details.reason` says which: `:load_failed`, `:spawn_failed`,
      `:exit_status`, ...)
    * `:not_found` - the worker does not host the agent it was asked for
    * `:invalid_argument` - the request was refused: a message history that
      is not a valid pydantic-ai history, data that has no JSON form, ...
    * `:python_error` - the agent run raised a Python exception; the message
      starts with its class, as Python prints it (`"RuntimeError: boom"`)
    * `:output_validation_failed` - the model's structured output did not
      validate, also after the retries pydantic-ai gave it
    * `:tool_failed` - a tool kept failing (invalid arguments, errors,
      timeouts) until its retries were used up
    * `:usage_limit_exceeded`, `:unexpected_model_behavior` - pydantic-ai's
      own failures of those names
    * `:model_http_error` - the model provider answered an HTTP error
      (pydantic-ai's `ModelHTTPError`)
    * `:model_unavailable` - the model provider could not be reached:
      connection refused, DNS, TLS, a transport timeout, or no answer within
      the model's `request_timeout` (pydantic-ai's `ModelConnectionError`,
      `ModelRequestTimeout`)
    * `:unrepresentable` - a value from Python that Elixir cannot hold
      exactly (NaN or an infinite float); the message names where it is
    * `:resource_exhausted` - a limit was hit (e.g. the maximum message size
      or the nesting depth of data)
    * `:unauthenticated` - a remote worker refused the token: from the
      agent's start, and from calls while it refuses it
    * `:tls_error` - the TLS handshake with a remote worker failed (its
      certificate is not valid for `:server_name`, or not signed by the
      `:ca` given, ...): from the agent's start, and from calls
    * `:protocol_error`, `:internal` - a bug in Synapse; please report it

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
      `"write"`, `"read"`, `"pool"` or `nil`);
    * `:timeout` and `:cancelled`, when pydantic-ai kept what the run did
      before it stopped: `:messages` (a `SynapseCore.Messages` to resume
      from, as `message_history:`), `:usage` (a `SynapseCore.Usage`, to
      bill) and `:run_id`.
  """

  @type kind ::
          :unknown_agent
          | :unavailable
          | :worker_exited
          | :timeout
          | :cancelled
          | :startup_failed
          | :not_found
          | :invalid_argument
          | :python_error
          | :usage_limit_exceeded
          | :output_validation_failed
          | :tool_failed
          | :unexpected_model_behavior
          | :model_http_error
          | :model_unavailable
          | :unrepresentable
          | :resource_exhausted
          | :unauthenticated
          | :tls_error
          | :protocol_error
          | :internal
          | :load_failed

  @type t :: %__MODULE__{kind: kind(), message: String.t(), details: map()}

  defexception [:kind, :message, details: %{}]

  @impl true
  def message(%__MODULE__{kind: kind, message: message}), do: "(#{kind}) #{message}"

  @doc """
  Builds an error.

      iex> SynapseCore.Error.new(:timeout, "too slow")
      %SynapseCore.Error{kind: :timeout, message: "too slow", details: %{}}
  """
  @spec new(kind(), String.t(), map()) :: t()
  def new(kind, message, details \\ %{}) when is_atom(kind) and is_binary(message) do
    %__MODULE__{kind: kind, message: message, details: details}
  end
end
