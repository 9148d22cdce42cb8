defmodule SynapseCore.LaneReaderTest do
  # The process that reads a local worker's lane for its unary calls
  # (SynapseCore.Channel.LaneReader), with a real worker: what its loss does
  # to the calls, and that the descriptors it reads are let go of.
  use ExUnit.Case, async: true

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

  # What that descriptor is open on.
  defp socket_of(port) do
    {:ok, "socket:" <> _ = socket} = File.read_link("/proc/self/fd/#{port_fd(port)}")
    socket
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

  test "a unary call is answered through the reader's Port on the worker's lane" do
    name = start_fixture_agent!("echo_agent")
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
    reader = reader(name)
    assert [port] = ports(reader)
    # The NIF's descriptor for writing, and the one the Port reads.
    assert [_, _] = port |> socket_of() |> open_on()
  end

  test "the unary connection ending fails its calls; the next call connects again" do
    {name, os_pid, call, reader} = slow_run_in_flight()
    [port] = ports(reader)

    # The connection ends under the reader's Port, as when the worker closes
    # it: shut down through a descriptor of the test's own.
    {:ok, socket} = :socket.open(port_fd(port), %{dup: true})
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

  test "an agent stopped lets go of its lane: the reader's Port closes, the socket is closed" do
    opts = fixture_agent("echo_agent")
    {:ok, supervisor} = SynapseCore.start_agent(opts)
    name = opts[:name]

    for _ <- 1..3, do: assert({:ok, %Result{}} = Agent.run_sync(name, "hi"))
    reader = reader(name)
    [port] = ports(reader)
    socket = socket_of(port)
    ref = Process.monitor(reader)

    :ok = SynapseCore.stop_agent(name)

    assert_receive {:DOWN, ^ref, :process, ^reader, _}, 30_000
    refute Port.info(port)
    refute Process.alive?(supervisor)
    eventually(fn -> open_on(socket) == [] end, 10_000)
  end
end
