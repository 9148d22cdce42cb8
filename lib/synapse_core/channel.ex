defmodule SynapseCore.Channel do
  @moduledoc false
  # A connection to one worker: the NIF's channel resource and the address
  # it points at. Cheap to copy; every call on it shares one HTTP/2
  # connection.

  alias SynapseCore.{Error, Native}

  @type t :: %__MODULE__{resource: reference(), address: String.t()}

  @enforce_keys [:resource, :address]
  defstruct [:resource, :address]

  @default_max_message_bytes 64 * 1024 * 1024

  # Options: :max_message_bytes; for TCP workers :tls ([ca_pem: pem,
  # server_name: name]) and :token (a zero-arity function returning it, so
  # that it never shows in an inspected struct or a crash report).
  @spec connect(String.t(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def connect(address, opts \\ []) do
    tls = Keyword.get(opts, :tls) || []

    options = %{
      max_message_bytes: Keyword.get(opts, :max_message_bytes, @default_max_message_bytes),
      ca_pem: tls[:ca_pem],
      server_name: tls[:server_name],
      token: if(token = opts[:token], do: token.())
    }

    case Native.channel_connect(address, options) do
      {:ok, resource} -> {:ok, %__MODULE__{resource: resource, address: address}}
      {:error, %Error{} = error} -> {:error, error}
    end
  end

  @doc "Fails every call in flight on the channel, and later ones, with `:worker_exited`."
  @spec close(t()) :: :ok
  def close(%__MODULE__{resource: resource}), do: Native.channel_close(resource)
end
