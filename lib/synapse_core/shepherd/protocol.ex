defmodule SynapseCore.Shepherd.Protocol do
  @moduledoc false
  # The frames spoken with `synapse-shepherd` (native/synapse_shepherd) over
  # an Erlang Port with `{:packet, 4}`. Pure encoding and decoding; the
  # port belongs to a `SynapseCore.Shepherd` process.

  @typedoc "What the shepherd reports."
  @type frame ::
          {:spawned, pos_integer()}
          | {:stdout, binary()}
          | {:stderr, binary()}
          | {:log, binary()}
          | {:ready, String.t()}
          | {:spawn_failed, String.t()}
          | {:exited, exit_status()}
          | {:unknown, binary()}

  @type exit_status :: {:code, integer()} | {:signal, pos_integer()}

  @typedoc """
  How to start a worker. `window` is the number of output frames (`O`, `E`,
  `L`, `R`) the shepherd sends ahead of `encode_ack/1`; `log_fd` the
  descriptor (3 or more, 0 for none) on which the worker finds its log pipe.
  """
  @type config :: %{
          argv: [String.t()],
          env: [{String.t(), String.t()}],
          cwd: String.t() | nil,
          grace_ms: non_neg_integer(),
          cleanup: String.t() | nil,
          window: pos_integer(),
          log_fd: non_neg_integer()
        }

  @doc """
  The first frame: what to start and how.

      iex> config = %{argv: ["/bin/true"], env: [{"A", "1"}], cwd: nil, grace_ms: 10,
      ...>            cleanup: nil, window: 64, log_fd: 3}
      iex> SynapseCore.Shepherd.Protocol.encode_config(config)
      <<"C", 1::32, 9::32, "/bin/true", 1::32, 3::32, "A=1", 0::32, 10::32, 0::32, 64::32, 3::32>>
  """
  @spec encode_config(config()) :: binary()
  def encode_config(%{argv: argv, env: env, cwd: cwd, grace_ms: grace_ms} = config) do
    IO.iodata_to_binary([
      "C",
      strings(argv),
      strings(Enum.map(env, fn {key, value} -> [key, "=", value] end)),
      string(cwd || ""),
      <<grace_ms::32>>,
      string(config.cleanup || ""),
      <<config.window::32, config.log_fd::32>>
    ])
  end

  @doc """
  Acknowledges `count` output frames, letting the shepherd send as many more.

      iex> SynapseCore.Shepherd.Protocol.encode_ack(32)
      <<"A", 32::32>>
  """
  @spec encode_ack(pos_integer()) :: binary()
  def encode_ack(count) when count > 0, do: <<"A", count::32>>

  @doc """
  Whether the shepherd counts `frame` against its window.

      iex> SynapseCore.Shepherd.Protocol.output?({:stdout, "hi"})
      true
      iex> SynapseCore.Shepherd.Protocol.output?({:spawned, 42})
      false
  """
  @spec output?(frame()) :: boolean()
  def output?({kind, _}) when kind in [:stdout, :stderr, :log, :ready], do: true
  def output?(_frame), do: false

  @doc """
  Asks the shepherd to send `signal` (a number) to the worker's process group.

      iex> SynapseCore.Shepherd.Protocol.encode_signal(9)
      <<"K", 9>>
  """
  @spec encode_signal(1..64) :: binary()
  def encode_signal(signal) when signal in 1..64, do: <<"K", signal>>

  @doc """
  Asks for a graceful stop: SIGTERM, then SIGKILL after the grace period.

      iex> SynapseCore.Shepherd.Protocol.encode_stop()
      "S"
  """
  @spec encode_stop() :: binary()
  def encode_stop, do: "S"

  @doc """
  Decodes one frame from the shepherd.

      iex> SynapseCore.Shepherd.Protocol.decode(<<"P", 4242::32>>)
      {:spawned, 4242}
      iex> SynapseCore.Shepherd.Protocol.decode("Ohello")
      {:stdout, "hello"}
      iex> SynapseCore.Shepherd.Protocol.decode("Runix:/tmp/s/worker.sock")
      {:ready, "unix:/tmp/s/worker.sock"}
      iex> SynapseCore.Shepherd.Protocol.decode(<<"X", 0, 3::signed-32>>)
      {:exited, {:code, 3}}
      iex> SynapseCore.Shepherd.Protocol.decode(<<"X", 1, 9::signed-32>>)
      {:exited, {:signal, 9}}
  """
  @spec decode(binary()) :: frame()
  def decode(<<"P", os_pid::32>>), do: {:spawned, os_pid}
  def decode(<<"O", line::binary>>), do: {:stdout, line}
  def decode(<<"E", line::binary>>), do: {:stderr, line}
  def decode(<<"L", line::binary>>), do: {:log, line}
  def decode(<<"R", address::binary>>), do: {:ready, address}
  def decode(<<"F", message::binary>>), do: {:spawn_failed, message}
  def decode(<<"X", 0, code::signed-32>>), do: {:exited, {:code, code}}
  def decode(<<"X", 1, signal::signed-32>>), do: {:exited, {:signal, signal}}
  def decode(other), do: {:unknown, other}

  @doc """
  Describes an exit status for humans.

      iex> SynapseCore.Shepherd.Protocol.describe_exit({:code, 1})
      "exited with status 1"
      iex> SynapseCore.Shepherd.Protocol.describe_exit({:signal, 9})
      "was killed by signal 9 (SIGKILL)"
  """
  @spec describe_exit(exit_status()) :: String.t()
  def describe_exit({:code, code}), do: "exited with status #{code}"

  def describe_exit({:signal, signal}) do
    case signal_name(signal) do
      nil -> "was killed by signal #{signal}"
      name -> "was killed by signal #{signal} (#{name})"
    end
  end

  @signal_names %{
    1 => "SIGHUP",
    2 => "SIGINT",
    3 => "SIGQUIT",
    4 => "SIGILL",
    6 => "SIGABRT",
    7 => "SIGBUS",
    8 => "SIGFPE",
    9 => "SIGKILL",
    11 => "SIGSEGV",
    13 => "SIGPIPE",
    14 => "SIGALRM",
    15 => "SIGTERM"
  }

  defp signal_name(signal), do: Map.get(@signal_names, signal)

  defp strings(list), do: [<<length(list)::32>> | Enum.map(list, &string/1)]

  defp string(value) do
    binary = IO.iodata_to_binary(value)
    [<<byte_size(binary)::32>>, binary]
  end
end
