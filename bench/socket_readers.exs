# How the BEAM reads a local socket, measured with nothing else in the way:
# why the lane's reply side is a Port on the connection's descriptor; and
# what a socket costs against a Port's pipes: why the lane's unary
# connection goes on pipes.
#
#   ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#     MIX_ENV=prod mix run bench/socket_readers.exs [--calls N] [--rounds R]
#
# One Python process (bench/python/jsonl_socket.py) answers JSON lines on a
# Unix socket, blocking in its reads. Each contender connects to it and
# makes N calls from 16 processes, through one router process that owns the
# connection and hands each answer to its caller (as the JSON-lines Port of
# bench/lane.exs does):
#
# * gen_tcp:  `:gen_tcp` on the socket (the inet driver: a Port reads it, and
#             writes it for each caller);
# * fd Port:  `:socket` connects and each caller writes with `:socket.send/2`
#             (a NIF), while a Port on the connection's descriptor reads it:
#             the lane's way on a socket (SynapseCore.Channel.LaneReader, and
#             the NIF's own write to the socket);
# * socket:   `:socket` both ways (reads through `enif_select`, as a NIF's
#             own reader would);
# * stdio Port: no socket: the same server on its standard input and output
#             (`--stdio`), a Port's two pipes, which the router owns and its
#             callers write to with `Port.command/2` (the JSON-lines Port of
#             bench/lane.exs): the transport of the lane's unary connection,
#             whose Port reads a pipe and whose NIF writes the other itself.
#
# Rounds interleave the contenders. Per round: wall time per call, the CPU
# per call of this VM and of the Python process (SynapseCore.Bench.Proc,
# from /proc), and the VM's process switches per call; then the medians.
# The Ports' descriptors are polled by the schedulers themselves once busy
# (the "scheduler pollset" of ERTS's check I/O), where an `enif_select`ed one
# is polled by the poll thread, which wakes a scheduler per answer read.
Code.require_file("support/paths_support.ex", __DIR__)
alias SynapseCore.Bench.Proc

{opts, _} = OptionParser.parse!(System.argv(), strict: [calls: :integer, rounds: :integer])
calls = Keyword.get(opts, :calls, 40_000)
rounds = Keyword.get(opts, :rounds, 3)
concurrency = 16

{:ok, python} = SynapseCore.Python.interpreter()
dir = Path.join(System.tmp_dir!(), "synapse-socket-readers-#{System.pid()}")
File.mkdir_p!(dir)
path = Path.join(dir, "s.sock")

server =
  Port.open({:spawn_executable, python}, [
    :binary,
    {:line, 100},
    args: [Path.expand("python/jsonl_socket.py", __DIR__), path]
  ])

receive do
  {^server, {:data, {:eol, "ready"}}} -> :ok
after
  10_000 -> raise "the Python server did not start"
end

{:os_pid, server_pid} = Port.info(server, :os_pid)

defmodule SocketReaders do
  # A router that reads one connection (given, except gen_tcp's and the
  # stdio Port's, which it makes): registers callers by index, and hands each
  # answer line to its caller. Sends `{:ready, write, peer}` to `parent`,
  # `write` being what a caller writes its line with and `peer` the OS pid of
  # the Python process answering (the socket's server, or the stdio Port's
  # own, which ends with the router). The connections `:socket` makes are
  # the parent's, closed by it once the router (and so the Port on its
  # descriptor) is gone.
  def router(:gen_tcp, {path, server}, parent) do
    {:ok, socket} = :gen_tcp.connect({:local, path}, 0, [:binary, packet: :line, active: true])

    send(parent, {:ready, fn line -> :ok = :gen_tcp.send(socket, line) end, server})
    gen_tcp(socket, %{})
  end

  def router(:fd_port, {socket, server}, parent) do
    {:ok, fd} = :socket.getopt(socket, {:otp, :fd})
    port = Port.open({:fd, fd, fd}, [:binary, :in, :eof])
    send(parent, {:ready, fn line -> :ok = :socket.send(socket, line) end, server})
    fd_port(port, %{}, "")
  end

  def router(:socket, {socket, server}, parent) do
    send(parent, {:ready, fn line -> :ok = :socket.send(socket, line) end, server})
    socket(socket, %{}, "")
  end

  def router(:stdio_port, {python, script}, parent) do
    port = Port.open({:spawn_executable, python}, [:binary, args: [script, "--stdio"]])
    {:os_pid, peer} = Port.info(port, :os_pid)
    send(parent, {:ready, fn line -> true = Port.command(port, line) end, peer})
    fd_port(port, %{}, "")
  end

  # What `router/3` is given for `kind`.
  def connect(:gen_tcp, {path, server, _python, _script}), do: {path, server}
  def connect(:stdio_port, {_path, _server, python, script}), do: {python, script}

  def connect(_kind, {path, server, _python, _script}) do
    {:ok, socket} = :socket.open(:local, :stream, :default)
    :ok = :socket.connect(socket, %{family: :local, path: path})
    {socket, server}
  end

  defp gen_tcp(socket, callers) do
    receive do
      {:register, index, pid} ->
        gen_tcp(socket, Map.put(callers, index, pid))

      {:tcp, ^socket, line} ->
        answer(callers, String.trim_trailing(line))
        gen_tcp(socket, callers)
    end
  end

  defp fd_port(port, callers, rest) do
    receive do
      {:register, index, pid} -> fd_port(port, Map.put(callers, index, pid), rest)
      {^port, {:data, data}} -> fd_port(port, callers, lines(rest <> data, callers))
    end
  end

  defp socket(socket, callers, rest) do
    case :socket.recv(socket, 0, [], :nowait) do
      {:ok, data} ->
        socket(socket, callers, lines(rest <> data, callers))

      # Some bytes read, and a select for the rest (OTP 25 may answer so).
      {:select, {_info, data}} ->
        socket_waiting(socket, callers, lines(rest <> data, callers))

      {:select, _info} ->
        socket_waiting(socket, callers, rest)
    end
  end

  defp socket_waiting(socket, callers, rest) do
    receive do
      {:register, index, pid} -> socket_waiting(socket, Map.put(callers, index, pid), rest)
      {:"$socket", ^socket, :select, _} -> socket(socket, callers, rest)
    end
  end

  defp lines(data, callers) do
    case :binary.split(data, "\n") do
      [line, rest] ->
        answer(callers, line)
        lines(rest, callers)

      [rest] ->
        rest
    end
  end

  defp answer(callers, line) do
    {:ok, [index, 42]} = SynapseCore.JSON.decode(line)
    send(Map.fetch!(callers, index), {:sum, index})
  end

  # `calls` calls from `concurrency` processes, through `router`.
  def run(router, write, calls, concurrency) do
    1..concurrency
    |> Enum.map(fn index ->
      Task.async(fn ->
        send(router, {:register, index, self()})
        line = ["[", Integer.to_string(index), ",20,22]\n"]

        for _ <- 1..div(calls, concurrency) do
          write.(line)
          receive(do: ({:sum, ^index} -> :ok))
        end
      end)
    end)
    |> Task.await_many(:infinity)
  end
end

contenders = [
  gen_tcp: "gen_tcp",
  fd_port: "fd Port (the lane's on a socket)",
  socket: "socket",
  stdio_port: "stdio Port (pipes)"
]

script = Path.expand("python/jsonl_socket.py", __DIR__)

measured =
  for round <- 1..rounds, {kind, label} <- contenders do
    parent = self()
    connection = SocketReaders.connect(kind, {path, server_pid, python, script})
    router = spawn(fn -> SocketReaders.router(kind, connection, parent) end)
    {write, peer_pid} = receive(do: ({:ready, write, peer} -> {write, peer}))
    # Warm-up; every caller registers before its first call.
    SocketReaders.run(router, write, div(calls, 10), concurrency)

    beam = Proc.cpu_seconds([:beam])
    peer = Proc.cpu_seconds([peer_pid])
    {switches, _} = :erlang.statistics(:context_switches)
    started = System.monotonic_time(:microsecond)
    SocketReaders.run(router, write, calls, concurrency)
    wall = System.monotonic_time(:microsecond) - started
    {switches_after, _} = :erlang.statistics(:context_switches)

    row = %{
      label: label,
      wall: wall / calls,
      beam: (Proc.cpu_seconds([:beam]) - beam) * 1.0e6 / calls,
      python: (Proc.cpu_seconds([peer_pid]) - peer) * 1.0e6 / calls,
      switches: (switches_after - switches) / calls
    }

    ref = Process.monitor(router)
    Process.exit(router, :kill)
    receive(do: ({:DOWN, ^ref, :process, _, _} -> :ok))
    if kind in [:fd_port, :socket], do: :ok = :socket.close(elem(connection, 0))
    # The server takes the next connection once this one has closed.
    Process.sleep(100)

    IO.puts(
      "round #{round} #{label}: wall #{Float.round(row.wall, 1)} µs/call; CPU per call: " <>
        "BEAM #{Float.round(row.beam, 1)} µs, Python #{Float.round(row.python, 1)} µs; " <>
        "process switches #{Float.round(row.switches, 2)}"
    )

    row
  end

median = fn values -> values |> Enum.sort() |> Enum.at(div(length(values), 2)) end

IO.puts("""

== medians over #{rounds} rounds, #{calls} calls each, concurrency #{concurrency}

| reader | wall µs/call | BEAM CPU µs/call | Python CPU µs/call |
|---|---:|---:|---:|\
""")

for {_kind, label} <- contenders do
  rows = Enum.filter(measured, &(&1.label == label))
  cell = fn key -> rows |> Enum.map(&Map.fetch!(&1, key)) |> median.() |> Float.round(1) end
  IO.puts("| #{label} | #{cell.(:wall)} | #{cell.(:beam)} | #{cell.(:python)} |")
end

Port.close(server)
File.rm_rf!(dir)
