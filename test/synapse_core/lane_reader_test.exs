defmodule SynapseCore.LaneReaderTest do
  # The process that reads a local worker's lane for its unary calls
  # (SynapseCore.Channel.LaneReader), with a real worker: that the
  # connection it reads goes on pipes, what its loss does to the calls, and
  # that the descriptors it reads are let go of.
  #
  # Not async: finding the lane's sockets opens this VM's sockets with
  # `:socket`, whose close clears O_NONBLOCK on the descriptor it shares
  # (OTP 25), so no other test's socket may be in use meanwhile (a TCP
  # listener of another test's, left blocking, once hung a scheduler in
  # its accept). Only Unix sockets are opened at all.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result}

  @moduletag capture_log: true

  defp reader(name) do
    [%{pid: worker}] = Agent.workers(name)
    {_state, data} = :sys.get_state(worker)
    data.channel.reader
  end

  defp ports(reader) do
    {:links, links} = Process.info(reader, :links)
    Enum.filter(links, &is_port/1)
  end

  # The descriptor a Port on a descriptor reads (its name is "in/out").
  defp port_fd(port) do
    {:name, name} = Port.info(port, :name)
    [fd, fd] = name |> to_string() |> String.split("/")
    String.to_integer(fd)
  end

  # The pipe that descriptor reads.
  defp pipe_of(port) do
    {:ok, "pipe:" <> _ = pipe} = File.read_link("/proc/self/fd/#{port_fd(port)}")
    pipe
  end

  # The pipes this VM holds an end of whose other end the process `os_pid`
  # holds: the lane's (the worker shares no other pipe with the VM).
  defp shared_pipes(os_pid) do
    ours =
      for fd <- File.ls!("/proc/self/fd"),
          {:ok, "pipe:" <> _ = pipe} <- [File.read_link("/proc/self/fd/#{fd}")],
          do: pipe

    Enum.filter(Enum.uniq(ours), &(&1 in opened_by(os_pid)))
  end

  # What the descriptors of the process `os_pid` are open on.
  defp opened_by(os_pid) do
    dir = "/proc/#{os_pid}/fd"
    for fd <- File.ls!(dir), {:ok, link} <- [File.read_link(Path.join(dir, fd))], do: link
  end

  # This VM's sockets connected to the lane of agent `name`'s worker (the
  # sockets of the lane's connections): each descriptor and what it is
  # open on.
  defp lane_sockets(name) do
    [%{pid: worker}] = Agent.workers(name)
    {_state, data} = :sys.get_state(worker)
    lane = Path.join(data.dir, "lane.sock")

    unix = unix_socket_inodes()

    for fd <- File.ls!("/proc/self/fd"),
        {:ok, "socket:[" <> inode = link} <- [File.read_link("/proc/self/fd/#{fd}")],
        String.trim_trailing(inode, "]") in unix,
        peer(String.to_integer(fd)) == lane,
        do: {String.to_integer(fd), link}
  end

  # The inodes of the machine's Unix sockets (as strings).
  defp unix_socket_inodes do
    "/proc/net/unix"
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.drop(1)
    |> MapSet.new(&Enum.at(String.split(&1), 6))
  end

  # The path of the Unix socket the socket `fd` is connected to, if any.
  defp peer(fd) do
    case :socket.open(fd, %{dup: true}) do
      {:ok, socket} ->
        peer = with {:ok, %{family: :local, path: path}} <- :socket.peername(socket), do: path
        :socket.close(socket)
        peer

      {:error, _} ->
        nil
    end
  end

  # A slow agent with a run in flight on it: its name, its worker's OS pid,
  # the run's task and the agent's reader.
  defp slow_run_in_flight do
    name = start_fixture_agent!("slow_agent")
    os_pid = worker_os_pid(name)
    call = Task.async(fn -> Agent.run_sync(name, "30", timeout: 60_000) end)
    # Long enough for the run to reach the worker.
    Process.sleep(400)
    {name, os_pid, call, reader(name)}
  end

  # This VM's descriptors open on `socket`.
  defp open_on(socket) do
    "/proc/self/fd"
    |> File.ls!()
    |> Enum.filter(&(File.read_link("/proc/self/fd/#{&1}") == {:ok, socket}))
  end

  test "a unary call is answered through the reader's Port, on a pipe from the worker" do
    name = start_fixture_agent!("echo_agent")
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
    reader = reader(name)
    assert [port] = ports(reader)
    # The Port reads a pipe whose other end the worker holds: in this VM,
    # only the Port's descriptor is open on it.
    pipe = pipe_of(port)
    assert [_] = open_on(pipe)
    assert pipe in opened_by(worker_os_pid(name))
    # The connection's socket stays open, its life; nothing else is on the lane.
    assert [{_fd, _socket}] = lane_sockets(name)
  end

  test "a sync Bridge function's calls take a connection of their own, on pipes it reads too" do
    # The example's committed client, compiled under a name of this test's own.
    examples = Path.expand("../../examples/bridge", __DIR__)
    client = Module.concat(__MODULE__, MyModule)

    examples
    |> Path.join("lib/my_module.ex")
    |> File.read!()
    |> String.replace("defmodule MyModule do", "defmodule #{inspect(client)} do")
    |> Code.compile_string()

    name = :"my_module_#{System.unique_integer([:positive])}"

    start_supervised!(
      {SynapseCore.Bridge,
       name: name,
       module: "my_module",
       python_path: [Path.join(examples, "priv/synapse_bridge"), examples]}
    )

    assert {:ok, "Hello, Alice! You are 30 years old."} =
             apply(client, :process_data, [name, %{name: "Alice", age: 30}])

    # process_data is sync: its connection's hello asks for threads and pipes.
    assert [_ | _] = ports = ports(reader(name))
    os_pid = worker_os_pid(name)

    for port <- ports do
      pipe = pipe_of(port)
      assert [_] = open_on(pipe)
      assert pipe in opened_by(os_pid)
    end

    assert length(lane_sockets(name)) == length(ports)
  end

  test "a streamed run's connection goes on pipes too, read by the NIF, not by a Port" do
    name = start_fixture_agent!("echo_agent")
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
    os_pid = worker_os_pid(name)
    assert [_, _] = shared_pipes(os_pid)

    assert [_ | _] = name |> Agent.run_stream("hi") |> Enum.to_list()
    # Two more pipes, and a second socket: the stream's connection's.
    assert [_, _, _, _] = shared_pipes(os_pid)
    assert [_, _] = lane_sockets(name)
    assert [_] = ports(reader(name))
  end

  test "the unary connection ending fails its calls; the next call connects again" do
    {name, os_pid, call, reader} = slow_run_in_flight()
    [port] = ports(reader)

    # The connection ends under the reader's Port, as when the worker closes
    # it: its socket shut down through a descriptor of the test's own, upon
    # which the worker closes its pipes.
    [{fd, _}] = lane_sockets(name)
    {:ok, socket} = :socket.open(fd, %{dup: true})
    :ok = :socket.shutdown(socket, :read_write)
    :ok = :socket.close(socket)

    assert {:error, %Error{kind: :unavailable, message: message}} = Task.await(call, 10_000)
    assert message =~ "the worker closed the lane"
    eventually(fn -> ports(reader) == [] end)

    # The same worker, on a new connection read by the same reader.
    assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    assert worker_os_pid(name) == os_pid
    assert reader(name) == reader
    assert [new_port] = ports(reader)
    assert new_port != port
  end

  test "the reader killed: calls in flight get :worker_exited and the worker is replaced" do
    {name, os_pid, call, reader} = slow_run_in_flight()

    Process.exit(reader, :kill)

    assert {:error, %Error{kind: :worker_exited}} = Task.await(call)

    eventually(
      fn -> match?([%{os_pid: new}] when new != os_pid, Agent.workers(name)) end,
      60_000
    )

    assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    refute reader(name) == reader
  end

  test "an agent stopped lets go of its lane: the reader's Port closes, the pipe and socket too" do
    opts = fixture_agent("echo_agent")
    {:ok, supervisor} = SynapseCore.start_agent(opts)
    name = opts[:name]

    for _ <- 1..3, do: assert({:ok, %Result{}} = Agent.run_sync(name, "hi"))
    reader = reader(name)
    [port] = ports(reader)
    pipe = pipe_of(port)
    [{_fd, socket}] = lane_sockets(name)
    ref = Process.monitor(reader)

    :ok = SynapseCore.stop_agent(name)

    assert_receive {:DOWN, ^ref, :process, ^reader, _}, 30_000
    refute Port.info(port)
    refute Process.alive?(supervisor)
    eventually(fn -> open_on(pipe) == [] and open_on(socket) == [] end, 10_000)
  end
end
