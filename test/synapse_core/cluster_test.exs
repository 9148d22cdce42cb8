defmodule SynapseCore.ClusterTest do
  # Three BEAM nodes on this machine, started with OTP's :peer: agents on
  # nodes B and C, calls from this node (A), which has none.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Tool}

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  setup_all do
    {_, 0} = System.cmd("epmd", ["-daemon"])

    unless Node.alive?() do
      {:ok, _} =
        Node.start(
          :"synapse_a_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1",
          :longnames
        )
    end

    :ok
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

  defp start_agent_on(node, name) do
    {:ok, _} =
      :erpc.call(node, SynapseCore, :start_agent, [
        [
          name: name,
          agent: "synapse_fixtures.agents:calling_agent",
          python_path: [fixtures_path()]
        ]
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
end
