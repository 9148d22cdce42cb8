defmodule SynapseCore.Channel do
  @moduledoc false
  # A connection to one worker: the NIF's channel resource and the address
  # it points at. Cheap to copy; every call on it shares its connections:
  # the worker's lane when it has one (a local worker: one connection for
  # unary calls, one for those of the Bridge's sync functions that the
  # worker's threads answer, both read by the channel's reader, and one for
  # streams), else HTTP/2.

  alias SynapseCore.{Agent.Options, Channel.LaneReader, Error, Native}

  @type t :: %__MODULE__{resource: reference(), address: String.t(), reader: pid() | nil}

  # `reader`: the process that reads the lane's unary calls
  # (SynapseCore.Channel.LaneReader), linked to the process that connected.
  @enforce_keys [:resource, :address]
  defstruct [:resource, :address, :reader]

  # Options: :max_message_bytes; :lane, the worker's lane ("unix:PATH"),
  # which every call then takes; for TCP workers :tls ([ca_pem: pem,
  # server_name: name]) and :token (a zero-arity function returning it, so
  # that it never shows in an inspected struct or a crash report). They were
  # validated with the agent's options (SynapseCore.Agent.Options). With a
  # lane, the caller is linked to the channel's reader, whose exit is the
  # channel's loss.
  @spec connect(String.t(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def connect(address, opts \\ []) do
    tls = Keyword.get(opts, :tls) || []

    with {:ok, token} <- token(opts[:token]) do
      reader = if opts[:lane], do: LaneReader.start_link()

      options = %{
        max_message_bytes:
          Keyword.get(opts, :max_message_bytes, Options.default_max_message_bytes()),
        lane: opts[:lane],
        ca_pem: tls[:ca_pem],
        server_name: tls[:server_name],
        token: token,
        lane_reader: reader
      }

      case Native.channel_connect(address, options) do
        {:ok, resource} ->
          {:ok, %__MODULE__{resource: resource, address: address, reader: reader}}

        {:error, %Error{} = error} ->
          if reader, do: LaneReader.stop(reader)
          {:error, error}
      end
    end
  end

  # The token goes straight from the user's function into a NIF resource:
  # `Native.channel_token/1` takes any term and never raises, so the token
  # is never an argument of anything that can put it in a stack trace.
  defp token(nil), do: {:ok, nil}

  defp token(fun) do
    Native.channel_token(fun.())
  catch
    # Only the kind: the message of whatever the user's function raised
    # might quote the token.
    kind, reason ->
      what =
        if kind == :error,
          do: inspect(Exception.normalize(:error, reason, __STACKTRACE__).__struct__),
          else: inspect(kind)

      {:error, Error.new(:invalid_argument, "the :token function failed (#{what})")}
  end

  @doc "Fails every call in flight on the channel, and later ones, with `:worker_exited`."
  @spec close(t()) :: :ok
  def close(%__MODULE__{resource: resource, reader: reader}) do
    Native.channel_close(resource)
    if reader, do: LaneReader.stop(reader)
    :ok
  end
end
