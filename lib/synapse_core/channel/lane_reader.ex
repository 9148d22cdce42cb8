defmodule SynapseCore.Channel.LaneReader do
  @moduledoc false
  # Reads a local worker's lane for the NIF: the connections of the
  # worker's unary calls (those its event loop answers, and those its
  # threads answer) are read here, through a Port on the pipe each comes
  # on, rather than by a thread of the NIF. The schedulers poll a Port's descriptor
  # themselves, so an answer wakes one scheduler, which reads it and, in
  # `Native.lane_received/2`, builds the caller's reply and sends it: no
  # thread hand-off between the worker's answer and its caller (see
  # native/synapse_native/src/lane_reader.rs).
  #
  # One per channel, linked to the process that opened the channel (the
  # worker's `SynapseCore.Worker`, which treats its exit as the channel's
  # loss). The NIF sends `{:synapse_lane_inbound, inbound, fd}` for each
  # connection it makes; this process reads `fd` until the worker closes it
  # or breaks the protocol, or the channel closes. The descriptor belongs to
  # the NIF: a Port on a descriptor never closes it, and it is released
  # (`Native.lane_release/1`) only once the Port is closed, so the VM never
  # polls a descriptor that was closed.

  alias SynapseCore.Native

  @doc "Starts a reader linked to the calling process."
  @spec start_link() :: pid()
  def start_link, do: :proc_lib.spawn_link(__MODULE__, :init, [self()])

  @doc "Stops the reader: its connections end, and their calls fail."
  @spec stop(pid()) :: :ok
  def stop(reader) do
    send(reader, {__MODULE__, :stop})
    :ok
  end

  @doc false
  def init(parent) do
    # So that the Ports close before their descriptors are let go of,
    # whatever ends this process (but a kill).
    Process.flag(:trap_exit, true)
    loop(parent, %{})
  end

  defp loop(parent, ports) do
    receive do
      {port, {:data, bytes}} when is_map_key(ports, port) ->
        loop(parent, received(ports, port, bytes))

      {:synapse_lane_inbound, inbound, fd} ->
        loop(parent, adopt(ports, inbound, fd))

      {port, :eof} when is_map_key(ports, port) ->
        loop(parent, close(ports, port, "the worker closed the lane"))

      {:EXIT, port, reason} when is_map_key(ports, port) ->
        loop(parent, close(ports, port, "reading the lane failed: #{inspect(reason)}"))

      {:EXIT, ^parent, reason} ->
        close_all(ports)
        exit(reason)

      {__MODULE__, :stop} ->
        close_all(ports)

      _other ->
        loop(parent, ports)
    end
  end

  defp adopt(ports, inbound, fd) do
    port = Port.open({:fd, fd, fd}, [:binary, :in, :eof])
    Map.put(ports, port, inbound)
  rescue
    error in ArgumentError ->
      Native.lane_ended(inbound, "cannot read the lane: #{Exception.message(error)}")
      Native.lane_release(inbound)
      ports
  end

  defp received(ports, port, bytes) do
    case Native.lane_received(Map.fetch!(ports, port), bytes) do
      :ok -> ports
      # Frames are left: the NIF let this process be scheduled out first.
      :more -> received(ports, port, "")
      # The connection is over (the NIF has failed its calls).
      {:error, _reason} -> close(ports, port, nil)
    end
  end

  defp close(ports, port, reason) do
    {inbound, ports} = Map.pop!(ports, port)
    close_port(port)
    if reason, do: Native.lane_ended(inbound, reason)
    Native.lane_release(inbound)
    ports
  end

  defp close_port(port) do
    Port.close(port)
  rescue
    # It had exited already.
    ArgumentError -> :ok
  end

  defp close_all(ports) do
    ports
    |> Map.keys()
    |> Enum.reduce(ports, &close(&2, &1, "the lane's reader stopped"))

    :ok
  end
end
