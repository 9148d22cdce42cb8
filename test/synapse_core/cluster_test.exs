defmodule SynapseCore.ClusterTest do
  # Three BEAM nodes on this machine, started with OTP's :peer: agents and
  # bridges on nodes B and C, calls from this node (A), which has none.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Tool}

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
end
