defmodule SynapseCore.ClusterTest do
  # Three BEAM nodes on this machine, started with OTP's :peer: agents and
  # bridges on nodes B and C, calls from this node (A), which has none.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Run, TestListener, Tool}

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  @bridge_module "synapse_fixtures.bridge_types"

  setup_all do
    start_epmd!()

    unless Node.alive?() do
      {:ok, _} =
        Node.start(
          :"synapse_a_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1",
          :longnames
        )
    end

    # A bridge's files, on the disk the nodes share; its client is compiled
    # on this node only, which runs no bridge worker.
    dir = tmp_dir("synapse-cluster")
    on_exit(fn -> File.rm_rf!(dir) end)

    {:ok, files} =
      Mix.Tasks.Synapse.Gen.Bridge.generate(@bridge_module,
        python_path: fixtures_path(),
        lib: Path.join(dir, "lib"),
        out: Path.join(dir, "priv")
      )

    files |> Enum.filter(&String.ends_with?(&1, ".ex")) |> Enum.each(&Code.compile_file/1)
    %{bridge_path: [Path.join(dir, "priv"), fixtures_path()]}
  end

  defp start_peer(tag) do
    {:ok, peer, node} =
      :peer.start_link(%{
        name: :"synapse_#{tag}_#{System.pid()}_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: [~c"-setcookie", Atom.to_charlist(Node.get_cookie())]
      })

    :ok = :erpc.call(node, :code, :add_paths, [:code.get_path()])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:elixir])
    :ok = :erpc.call(node, Application, :put_env, [:logger, :level, :error])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:synapse_core])
    {peer, node}
  end

  defp start_agent_on(node, name, agent \\ "synapse_fixtures.agents:calling_agent") do
    {:ok, _} =
      :erpc.call(node, SynapseCore, :start_agent, [
        [name: name, agent: agent, python_path: [fixtures_path()]]
      ])

    # The worker joins the cluster-wide group once it serves.
    eventually(fn -> node in members(name) end, 30_000)
  end

  defp members(name) do
    SynapseCore.PG |> :pg.get_members({:synapse_worker, name}) |> Enum.map(&node/1)
  end

  test "an agent on another node: calls, streams and Elixir tools; the next node takes over" do
    name = :"shared_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:b)
    {peer_c, node_c} = start_peer(:c)
    start_agent_on(node_b, name)

    # The tool is defined here and runs here, where the caller said.
    here =
      Tool.new(name: "whereami", parameters: [], function: fn _ -> Atom.to_string(node()) end)

    prompt = ~s({"calls": [{"name": "whereami", "args": {}}]})

    assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [here])
    assert output == ~s([{"name": "whereami", "content": "#{node()}"}])

    events = name |> Agent.run_stream(prompt, tools: [here]) |> Enum.to_list()
    assert {:tool_call, %{name: "whereami"}} = Enum.find(events, &match?({:tool_call, _}, &1))
    assert {:result, %Result{output: ^output}} = List.last(events)

    {:ok, run} = Agent.run(name, ~s({"calls": []}))
    assert {:ok, %Result{output: "[]"}} = Agent.await(run)

    # Node B goes away: calls go to node C's agent.
    start_agent_on(node_c, name)
    :peer.stop(peer_b)
    eventually(fn -> node_b not in members(name) end, 10_000)
    assert {:ok, %Result{output: "[]"}} = Agent.run_sync(name, ~s({"calls": []}))
    assert members(name) == [node_c]

    :peer.stop(peer_c)
    eventually(fn -> members(name) == [] end, 10_000)

    assert {:error, %Error{kind: :unknown_agent}} = Agent.run_sync(name, ~s({"calls": []}))
  end

  # A run relayed to another node goes to the worker its caller's own calls
  # go to there, as a call on the caller's node would (the relay is a new
  # process per call: drawn from its pid, successive calls would spread).
  test "a process's runs one after the other on another node's pool stay on one worker" do
    name = :"pool_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:b)

    {:ok, _} =
      :erpc.call(node_b, SynapseCore, :start_agent, [
        [
          name: name,
          agent: "synapse_fixtures.faults:pid_agent",
          python_path: [fixtures_path()],
          workers: 2,
          # A health check in flight would count as a call.
          health_interval: :infinity
        ]
      ])

    eventually(fn -> length(:erpc.call(node_b, Agent, :workers, [name])) == 2 end, 30_000)
    eventually(fn -> node_b in members(name) end, 30_000)

    for pids <- sequential_outputs(name, "0"), do: assert([_one] = Enum.uniq(pids))

    :peer.stop(peer_b)
  end

  test "a node listed in the group but with no worker serving hands the call to one that has" do
    name = :"stale_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:sb)
    {peer_c, node_c} = start_peer(:sc)
    start_agent_on(node_c, name)

    # Node B is in the group, as a node whose worker left a moment ago is
    # until the group hears of it, but has no agent of that name.
    stale = Node.spawn(node_b, :timer, :sleep, [:infinity])
    :ok = :erpc.call(node_b, :pg, :join, [SynapseCore.PG, {:synapse_worker, name}, stale])
    eventually(fn -> Enum.sort(members(name)) == Enum.sort([node_b, node_c]) end, 10_000)

    # Drawn at random, node B is asked about half of the time.
    for _ <- 1..16 do
      assert {:ok, %Result{output: "[]"}} = Agent.run_sync(name, ~s({"calls": []}))
    end

    {:ok, run} = Agent.run(name, ~s({"calls": []}))
    assert {:ok, %Result{output: "[]"}} = Agent.await(run)

    # With no node serving after all, the answer is the last node's.
    :peer.stop(peer_c)
    eventually(fn -> members(name) == [node_b] end, 10_000)
    assert {:error, %Error{kind: :unknown_agent}} = Agent.run_sync(name, ~s({"calls": []}))

    :peer.stop(peer_b)
  end

  test "a run on another node answers once: awaiting or yielding it again raises" do
    name = :"answered_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:w)
    start_agent_on(node, name)

    {:ok, run} = Agent.run(name, ~s({"calls": []}), timeout: 10_000)
    assert {:ok, %Result{output: "[]"}} = Agent.await(run)
    # As for a run on this node: nothing more comes, and nothing is waited for.
    assert_raise ArgumentError, ~r/answer was taken already/, fn -> Agent.await(run) end
    assert_raise ArgumentError, ~r/answer was taken already/, fn -> Agent.yield(run, 10_000) end
    assert Agent.cancel(run) == :ok
    refute_received _

    :peer.stop(peer)
  end

  test "an agent on another node: multimodal prompts and every kind of event" do
    name = :"multimodal_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:m)
    start_agent_on(node, name, "synapse_fixtures.multimodal:describing_agent")
    bytes = :binary.copy(<<0, 255, 128>>, 1000)
    prompt = ["what is it?", {:binary, bytes, "image/png"}, {:image_url, "https://e.com/a.png"}]

    assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt)
    assert {:ok, [[_text, binary, %{"class" => "ImageUrl"}]]} = SynapseCore.JSON.decode(output)
    sha256 = :crypto.hash(:sha256, bytes) |> Base.encode16(case: :lower)
    assert %{"class" => "BinaryContent", "fields" => %{"data" => %{"sha256" => ^sha256}}} = binary

    events = name |> Agent.run_stream(prompt, events: :all) |> Enum.to_list()
    assert [{:part_start, %{part: %{"part_kind" => "text"}}} | _] = events

    assert {:part_end, %{part: %{"content" => ^output}}} =
             Enum.find(events, &match?({:part_end, _}, &1))

    assert {:result, %Result{output: ^output}} = List.last(events)
    :peer.stop(peer)
  end

  test "a run in flight on a node that goes down ends with :worker_exited" do
    name = :"doomed_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:d)

    {:ok, _} =
      :erpc.call(node, SynapseCore, :start_agent, [
        [name: name, agent: "synapse_fixtures.agents:slow_agent", python_path: [fixtures_path()]]
      ])

    eventually(fn -> node in members(name) end, 30_000)
    {:ok, run} = Agent.run(name, "30")
    Process.sleep(300)
    :peer.stop(peer)

    assert {:error, %Error{kind: :worker_exited, message: message}} = Agent.await(run, 10_000)
    assert message =~ "was lost"
  end

  test "a stream to another process, on a node that goes down: the receiver gets the end" do
    name = :"doomed_stream_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:s)
    start_agent_on(node, name, "synapse_fixtures.agents:slow_stream_agent")
    test = self()

    receiver =
      spawn_link(fn ->
        ref = receive(do: ({:ref, ref} -> ref))
        send(test, {:ended, final_event(ref)})
      end)

    {:ok, run} = Agent.run_stream(name, "300 0.1", stream_to: receiver, window: :infinity)
    send(receiver, {:ref, run.ref})
    Process.sleep(300)
    :peer.stop(peer)

    assert_receive {:ended, {:error, %Error{kind: :worker_exited, message: message}}}, 10_000
    assert message =~ "was lost"
    # Nothing of the run is left for the process that started it.
    refute_receive _, 500
  end

  test "a stream to another process, whose caller exits: the receiver gets :cancelled" do
    name = :"orphaned_stream_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:o)
    start_agent_on(node, name, "synapse_fixtures.agents:slow_stream_agent")
    test = self()

    receiver =
      spawn_link(fn ->
        ref = receive(do: ({:ref, ref} -> ref))
        # The run is under way: its caller may go.
        assert_receive {:synapse_event, ^ref, _event}, 30_000
        send(test, :started)
        send(test, {:ended, final_event(ref)})
      end)

    caller =
      spawn(fn ->
        {:ok, run} = Agent.run_stream(name, "300 0.1", stream_to: receiver, window: :infinity)
        send(receiver, {:ref, run.ref})
        receive(do: (:exit -> :ok))
      end)

    assert_receive :started, 30_000
    send(caller, :exit)

    # As for a run on this node: the run is cancelled, and says so; its
    # node was not lost.
    assert_receive {:ended, {:error, %Error{kind: :cancelled}}}, 10_000
    :peer.stop(peer)
  end

  defp final_event(ref) do
    receive do
      {:synapse_event, ^ref, {:error, _} = error} -> error
      {:synapse_event, ^ref, {:result, _} = result} -> result
      {:synapse_event, ^ref, _event} -> final_event(ref)
    after
      20_000 -> :no_end
    end
  end

  test "approvals across nodes: the run on B, approvers on A and C, decided from anywhere" do
    name = :"approvals_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:b)
    {peer_c, node_c} = start_peer(:c)
    start_agent_on(node_b, name, "synapse_fixtures.approvals:inline_agent")
    delete = ~s({"calls": [{"name": "delete", "args": {"path": "a.txt"}}]})

    # A :pg group with a member here and one on C; B, which asks, runs the scope too.
    scope = :"reviewers_#{System.unique_integer([:positive])}"
    start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
    {:ok, _} = :erpc.call(node_b, :pg, :start, [scope])
    here = TestListener.start(self(), {scope, :reviewers})
    there = :erpc.call(node_c, TestListener, :start, [self(), {scope, :reviewers}])
    eventually(fn -> length(:erpc.call(node_b, :pg, :get_members, [scope, :reviewers])) == 2 end)

    {:ok, run} = Agent.run(name, delete, approver: {:pg, scope, :reviewers})
    assert_receive {^here, _, {:synapse_approval, approval}}, 30_000
    assert_receive {^there, ^node_c, {:synapse_approval, ^approval}}, 30_000
    assert node(approval.runner) == node_b
    assert :ok = TestListener.decide(there, :approve, approval, %{"path" => "b.txt"})

    # Settled, and the run may be over already (its only call is decided).
    assert {:error, %Error{kind: :invalid_argument, details: %{reason: reason}}} =
             Agent.deny(approval)

    assert reason in [:already_settled, :run_ended]

    for approver <- [here, there] do
      assert_receive {^approver, _, {:synapse_approval_closed, id, {:approved, _}}}, 5_000
      assert id == approval.id
    end

    assert {:ok, %Result{output: output}} = Agent.await(run)
    assert output == ~s([{"name": "delete", "content": "deleted b.txt"}])

    # A name registered on the caller's node is asked there, though the run is on B.
    registered = :"approver_#{System.unique_integer([:positive])}"
    Process.register(self(), registered)
    {:ok, run} = Agent.run(name, delete, approver: registered)
    assert_receive {:synapse_approval, approval}, 30_000
    assert :ok = TestListener.decide(there, :deny, approval, "No.")
    assert {:ok, %Result{output: output}} = Agent.await(run)
    assert output == ~s([{"name": "delete", "denied": "No."}])

    # The run's node goes down while a request waits: it cannot be decided any more.
    {:ok, run} = Agent.run(name, delete, approver: registered)
    assert_receive {:synapse_approval, approval}, 30_000
    :peer.stop(peer_b)
    assert {:error, %Error{kind: :worker_exited}} = Agent.await(run, 10_000)

    assert {:error, %Error{kind: :invalid_argument, details: %{reason: :run_ended}}} =
             TestListener.decide(there, :approve, approval, nil)

    :peer.stop(peer_c)
  end

  test "fan-out across nodes: the run on B, subscribers on A and C, C lost mid-run" do
    name = :"fan_out_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:b)
    {peer_c, node_c} = start_peer(:c)
    start_agent_on(node_b, name, "synapse_fixtures.agents:slow_stream_agent")

    scope = :"tabs_#{System.unique_integer([:positive])}"
    start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
    here = TestListener.start(self(), {scope, :tabs})
    there = :erpc.call(node_c, TestListener, :start, [self(), {scope, :tabs}])
    eventually(fn -> length(:pg.get_members(scope, :tabs)) == 2 end)

    {:ok, %Run{ref: ref}} =
      Agent.run_stream(name, "30 0", stream_to: {:pg, scope, :tabs}, window: 4)

    [ours, theirs] = Enum.map([here, there], &TestListener.events(&1, ref))
    assert ours == theirs
    assert {:result, %Result{output: output}} = List.last(ours)
    assert Enum.join(for {:text_delta, text} <- ours, do: text) == output

    # Node C goes down mid-run: its subscriber is dropped, the run goes on here.
    {:ok, %Run{ref: ref}} =
      Agent.run_stream(name, "200 0.01", stream_to: [here, there], window: 4)

    assert_receive {^there, ^node_c, {:synapse_event, ^ref, _}}, 10_000
    :peer.stop(peer_c)
    events = TestListener.events(here, ref)
    assert {:result, %Result{output: output}} = List.last(events)
    assert Enum.join(for {:text_delta, text} <- events, do: text) == output
    assert length(events) == 201

    :peer.stop(peer_b)
  end

  test "fan-out: a subscriber on another node cancels the run for every subscriber" do
    name = :"fan_out_cancel_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:fc)
    start_agent_on(node, name, "synapse_fixtures.agents:slow_stream_agent")
    here = TestListener.start(self())
    there = :erpc.call(node, TestListener, :start, [self()])

    {:ok, %Run{ref: ref}} = Agent.run_stream(name, "300 0.1", stream_to: [here, there], window: 4)

    assert_receive {^there, ^node, {:synapse_subscribed, subscribed}}, 10_000
    assert_receive {^there, ^node, {:synapse_event, ^ref, _event}}, 30_000

    # From the subscriber's node, where the run's hub is not.
    assert :erpc.call(node, Agent, :cancel, [subscribed]) == :ok
    assert {:error, %Error{kind: :cancelled}} = List.last(TestListener.events(here, ref))
    assert {:error, %Error{kind: :cancelled}} = List.last(TestListener.events(there, ref))

    :peer.stop(peer)
  end

  ## Bridges

  defp start_bridge_on(node, name, python_path) do
    {:ok, _} =
      :erpc.call(node, DynamicSupervisor, :start_child, [
        SynapseCore.AgentsSupervisor,
        {SynapseCore.Bridge, name: name, module: @bridge_module, python_path: python_path}
      ])

    eventually(fn -> node in members(name) end, 30_000)
  end

  defp bridge(function, args), do: apply(SynapseFixtures.BridgeTypes, function, args)

  # The Ports through which the lane reader of the worker of `name` on
  # `node` reads the worker's connections of unary calls.
  defp lane_ports(node, name) do
    [%{pid: worker}] = :erpc.call(node, SynapseCore.Agent, :workers, [name])
    {_state, data} = :sys.get_state(worker)
    {:links, links} = :erpc.call(node, Process, :info, [data.channel.reader, :links])
    Enum.filter(links, &is_port/1)
  end

  test "a bridge on another node: calls, streams and errors; the next node takes over", %{
    bridge_path: python_path
  } do
    name = :"bridge_#{System.unique_integer([:positive])}"
    {peer_b, node_b} = start_peer(:bb)
    {peer_c, node_c} = start_peer(:bc)
    start_bridge_on(node_b, name, python_path)
    assert SynapseCore.Agent.workers(name) == []

    person = %{name: "Ann", age: 42, address: %{street: "Main Street 1", city: "Lyon"}}
    assert bridge(:describe, [name, person]) == {:ok, "Ann (42) from Lyon, likes red"}
    assert bridge(:add_days!, [name, ~D[2024-02-28], [days: 2]]) == ~D[2024-03-01]
    # The relay on B made the sync function's call as a caller on B would:
    # on the lane's connection its worker's threads answer, next to the
    # loop's, both read by the worker's lane reader.
    assert [_, _] = lane_ports(node_b, name)
    assert name |> then(&bridge(:count_up, [&1, 1, 8, [step: 3]])) |> Enum.to_list() == [1, 4, 7]
    assert name |> then(&bridge(:slow_stream, [&1])) |> Enum.take(2) == [0, 1]

    assert {:error,
            %Error{kind: :invalid_argument, details: %{errors: [%{"loc" => ["person", "age"]}]}}} =
             bridge(:describe, [name, %{name: "Ann", age: -1}])

    assert {:error, %Error{kind: :python_error, message: "ValueError: boom"}} =
             bridge(:fail, [name, "boom"])

    # Node B goes away: calls go to node C's workers.
    start_bridge_on(node_c, name, python_path)
    :peer.stop(peer_b)
    eventually(fn -> node_b not in members(name) end, 10_000)
    assert bridge(:describe!, [name, person]) == "Ann (42) from Lyon, likes red"
    assert members(name) == [node_c]

    :peer.stop(peer_c)
    eventually(fn -> members(name) == [] end, 10_000)

    assert {:error, %Error{kind: :unknown_agent}} = bridge(:describe, [name, person])

    assert_raise Error, ~r/unknown_agent/, fn ->
      name |> then(&bridge(:count_up, [&1, 1, 3])) |> Enum.to_list()
    end
  end

  test "bridge calls and streams in flight on a node that goes down end with :worker_exited", %{
    bridge_path: python_path
  } do
    name = :"doomed_bridge_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:bd)
    start_bridge_on(node, name, python_path)

    call = Task.async(fn -> bridge(:slow, [name, 30.0]) end)
    test = self()

    stream =
      Task.async(fn ->
        try do
          name
          |> then(&bridge(:slow_stream, [&1]))
          |> Stream.each(fn _ -> send(test, :streaming) end)
          |> Stream.run()
        rescue
          error in Error -> {:raised, error}
        end
      end)

    # Both are under way on node B (the stream has yielded) when it stops.
    assert_receive :streaming, 15_000
    Process.sleep(200)
    :peer.stop(peer)

    assert {:error, %Error{kind: :worker_exited, message: message}} = Task.await(call, 10_000)
    assert message =~ "was lost"
    assert {:raised, %Error{kind: :worker_exited}} = Task.await(stream, 10_000)
  end

  test "a run on another node: telemetry on the caller's node, the caller's trace in Python" do
    name = :"traced_#{System.unique_integer([:positive])}"
    {peer, node} = start_peer(:t)

    start_agent_on(node, name, "synapse_fixtures.traced:traced_agent")

    test = self()
    id = {__MODULE__, make_ref()}

    handler = fn event, _measurements, metadata, _ ->
      if metadata[:agent] == name, do: send(test, {:event, event, metadata})
    end

    :ok = :telemetry.attach_many(id, SynapseCore.Telemetry.events(), handler, nil)
    on_exit(fn -> :telemetry.detach(id) end)

    trace = Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)
    parent = "00f067aa0ba902b7"
    :otel_propagator_text_map.put_current("00-#{trace}-#{parent}-01")
    {:ok, result} = Agent.run_sync(name, "hi")

    assert_receive {:event, [:synapse, :run, :start],
                    %{mode: :sync, node: ^node, worker: nil, telemetry_span_context: span}}

    assert_receive {:event, [:synapse, :run, :stop],
                    %{telemetry_span_context: ^span, usage: usage}}

    assert usage == result.usage

    # Streamed to a receiver: the end is reported on this node too.
    {:ok, run} = Agent.run_stream(name, "hi", stream_to: self())
    ref = run.ref
    assert_receive {:synapse_event, ^ref, {:result, _}}, 10_000

    assert_receive {:event, [:synapse, :run, :start],
                    %{mode: :stream, telemetry_span_context: streamed}}

    assert_receive {:event, [:synapse, :run, :stop], %{telemetry_span_context: ^streamed}}, 5_000

    :otel_propagator_text_map.put_current(nil)
    {:ok, %{output: json}} = Agent.run_sync(name, "spans?")
    {:ok, spans} = SynapseCore.JSON.decode(json)

    runs =
      for %{"trace_id" => ^trace, "parent_id" => ^parent, "remote_parent" => true} = span <-
            spans,
          do: span

    # The run_sync and the stream, both in the caller's trace.
    assert length(runs) == 2
    :peer.stop(peer)
  end
end
