defmodule SynapseCore.BootTest do
  # Agents in a supervision tree: started in parallel, with the boot waiting
  # for them (or not).
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, AwaitReady, Error, Result}

  @moduletag capture_log: true

  # Agents whose workers' imports wait for each other: they only load when
  # all of them start at once (synapse_fixtures.rendezvous).
  defp rendezvous_agents(count, extra) do
    dir = Path.join(System.tmp_dir!(), "synapse-boot-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    for _ <- 1..count do
      fixture_agent("x",
        agent: "synapse_fixtures.rendezvous:agent",
        env: [
          {"SYNAPSE_TEST_RENDEZVOUS_DIR", dir},
          {"SYNAPSE_TEST_RENDEZVOUS_COUNT", Integer.to_string(count)}
        ]
      )
      |> Keyword.merge(extra)
    end
  end

  test "agents with await_ready: false start in parallel; AwaitReady holds the boot until they serve" do
    agents = rendezvous_agents(3, await_ready: false)
    names = Enum.map(agents, & &1[:name])
    children = Enum.map(agents, &{Agent, &1}) ++ [{AwaitReady, names}]

    {:ok, _tree} =
      start_supervised(%{
        id: :tree,
        start: {Supervisor, :start_link, [children, [strategy: :one_for_one]]},
        type: :supervisor
      })

    # The tree's start returned: every agent serves.
    for name <- names do
      assert [%{os_pid: _}] = Agent.workers(name)
      assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
    end
  end

  test "without a barrier the boot does not wait; calls meanwhile are :unavailable" do
    [opts] = rendezvous_agents(1, await_ready: false)
    start_supervised!({Agent, opts})
    assert {:error, %Error{kind: :unavailable}} = Agent.run_sync(opts[:name], "hi")
    assert :ok = SynapseCore.await_ready(opts[:name])
    assert {:ok, %Result{}} = Agent.run_sync(opts[:name], "hi")
  end

  test "a failed first start fails the barrier, and every call, with its error" do
    opts = fixture_agent("x", agent: "synapse_fixtures.broken_import:agent", await_ready: false)
    start_supervised!({Agent, opts})

    assert {:error, %Error{kind: :startup_failed, message: message}} =
             AwaitReady.start_link([opts[:name]])

    assert message =~ "boom at import"

    assert {:error, %Error{kind: :startup_failed, message: ^message}} =
             Agent.run_sync(opts[:name], "hi")
  end

  test "a Python without the worker's dependencies fails for good, with await_ready: false too" do
    # The interpreter without its site-packages: no grpc, no pydantic-ai.
    dir = Path.join(System.tmp_dir!(), "synapse-boot-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, interpreter} = SynapseCore.Python.interpreter()
    python = Path.join(dir, "python")
    File.write!(python, "#!/bin/sh\nexec #{interpreter} -S \"$@\"\n")
    File.chmod!(python, 0o755)

    opts = fixture_agent("echo_agent", python: python, await_ready: false, max_backoff: 200)
    start_supervised!({Agent, opts})

    assert {:error, %Error{kind: :startup_failed, message: message}} =
             AwaitReady.start_link([opts[:name]])

    assert message =~ "No module named"
    assert message =~ "mix synapse.setup"
  end

  test "a local worker that never served holds the barrier: it fails when its time is up" do
    opts = fixture_agent("echo_agent", python: "/bin/false", await_ready: false)
    start_supervised!({Agent, opts})

    assert {:error, %Error{kind: :startup_failed}} =
             AwaitReady.start_link(names: [opts[:name]], timeout: 3_000)

    assert [] = Agent.workers(opts[:name])
  end

  test "the barrier names an agent that is not there" do
    assert {:error, %Error{kind: :unknown_agent}} = SynapseCore.await_ready([unique_name()])
  end

  test "names given in a shape the barrier does not take raise ArgumentError saying so" do
    name = start_fixture_agent!("echo_agent")

    assert_raise ArgumentError, ~r/improper list/, fn ->
      SynapseCore.await_ready([name | name])
    end

    assert_raise ArgumentError, ~r/improper list/, fn -> AwaitReady.start_link([name | name]) end

    assert_raise ArgumentError, ~r/without :names/, fn ->
      AwaitReady.start_link(timeout: 1_000)
    end

    assert :ignore = AwaitReady.start_link(names: [name], timeout: 1_000)
  end
end
