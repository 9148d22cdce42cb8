defmodule SynapseCore.ApprovalsTest do
  # Tool calls that wait for a person's decision, both ways, through real
  # pydantic-ai runs (synapse_fixtures.approvals): the run ends with them
  # and is resumed with the decisions (compared with the same agent run
  # directly in Python), or the run asks an approver while it waits. On
  # each transport (SynapseCore.Transports).
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{
    Agent,
    Approval,
    DeferredToolRequests,
    Error,
    Fidelity,
    JSON,
    Result,
    TestListener,
    Tool
  }

  alias SynapseCore.DeferredToolRequests.Call

  @moduletag capture_log: true

  @fixtures "synapse_fixtures.approvals"

  defp start_agent!(attr, extra \\ []),
    do: start_fixture_agent!(attr, [agent: "#{@fixtures}:#{attr}"] ++ extra)

  # The fixtures' model calls the tools its prompt lists ("call-0", "call-1", ...).
  defp script(calls) do
    {:ok, json} =
      JSON.encode(%{"calls" => Enum.map(calls, fn {name, args} -> %{name: name, args: args} end)})

    json
  end

  @three_calls [{"delete", %{path: "a.txt"}}, {"pay", %{amount: 500}}, {"compute", %{x: 2}}]

  # An Elixir tool needing approval; `test` hears of each call.
  defp note_tool(test) do
    Tool.new(
      name: "note",
      parameters: [text: :string],
      requires_approval: true,
      function: fn %{text: text} ->
        send(test, {:noted, text})
        "noted #{text}"
      end
    )
  end

  defp returns(%Result{output: output}) do
    {:ok, returns} = JSON.decode(output)
    returns |> Enum.sort_by(& &1["name"])
  end

  # The `count` approvals a TestListener passed on, by the path they delete.
  defp approvals_heard(listener, count) do
    for _ <- 1..count do
      assert_receive {^listener, _, {:synapse_approval, approval}}, 30_000
      approval
    end
    |> Enum.sort_by(& &1.args["path"])
  end

  describe "as pydantic-ai does it: the run ends with its deferred calls" do
    test "and is resumed with the decisions, exactly as in Python" do
      record = Fidelity.record_path("synapse")
      direct_record = Fidelity.record_path("python")
      name = start_agent!("ops_agent", env: [{"SYNAPSE_FIDELITY_RECORD", record}])

      decisions = %{
        "approvals" => %{
          "call-0" => %{"message" => "Not that file."},
          "call-1" => %{"override_args" => %{"amount" => 50}}
        },
        "calls" => %{"call-2" => %{"return" => 14}}
      }

      turns = [
        %{"prompt" => script(@three_calls)},
        %{"history" => true, "deferred_tool_results" => decisions},
        # The same decisions again, from the same first turn, streamed.
        %{"prompt" => script(@three_calls), "stream" => true},
        %{"history" => true, "deferred_tool_results" => decisions, "stream" => true}
      ]

      synapse = Fidelity.synapse_run(name, turns)

      [direct] =
        Fidelity.direct_run!([
          %{"agent" => "#{@fixtures}:ops_agent", "record" => direct_record, "turns" => turns}
        ])

      for {{ours, theirs}, index} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
        Fidelity.assert_same_run(ours, theirs, "ops_agent, turn #{index}")
      end

      assert Fidelity.records(record) == Fidelity.records(direct_record)

      [first, second | _] = synapse
      assert %Result{output_type: "DeferredToolRequests", output: deferred} = first["result"]

      # In pydantic-ai's order (calls raising ApprovalRequired first); by id here.
      assert [
               %Call{
                 tool_call_id: "call-0",
                 tool_name: "delete",
                 args: %{"path" => "a.txt"},
                 metadata: nil,
                 kind: :approval
               },
               %Call{
                 tool_call_id: "call-1",
                 tool_name: "pay",
                 args: %{"amount" => 500},
                 metadata: %{"limit" => 100},
                 kind: :approval
               }
             ] = Enum.sort_by(deferred.approvals, & &1.tool_call_id)

      assert [
               %Call{
                 tool_call_id: "call-2",
                 tool_name: "compute",
                 args: %{"x" => 2},
                 metadata: %{"queue" => "batch"},
                 kind: :external
               }
             ] = deferred.calls

      assert returns(second["result"]) == [
               %{"name" => "compute", "content" => 14},
               %{"name" => "delete", "denied" => "Not that file."},
               %{"name" => "pay", "content" => "paid 50"}
             ]
    end

    test "a call's metadata, none or an empty object, is as in Python" do
      name = start_agent!("ops_agent")
      turns = [%{"prompt" => script([{"delete", %{path: "a.txt"}}, {"review", %{x: 1}}])}]

      [ours] = Fidelity.synapse_run(name, turns)

      [[theirs]] =
        Fidelity.direct_run!([%{"agent" => "#{@fixtures}:ops_agent", "turns" => turns}])

      Fidelity.assert_same_run(ours, theirs, "ops_agent, empty metadata")

      # `ApprovalRequired(metadata={})` gives `{}`; `requires_approval`, no metadata.
      assert [
               %Call{tool_name: "delete", metadata: nil},
               %Call{tool_name: "review", metadata: %{}}
             ] = Enum.sort_by(ours["result"].output.approvals, & &1.tool_call_id)
    end

    test "every form of decision and outcome" do
      name = start_agent!("ops_agent")
      {:ok, first} = Agent.run_sync(name, script(@three_calls))

      for {approvals, calls, expected} <- [
            {%{"call-0" => true, "call-1" => :deny}, %{"call-2" => {:retry, "Try later."}},
             [
               %{"name" => "compute", "retry" => "Try later."},
               %{"name" => "delete", "content" => "deleted a.txt"},
               %{"name" => "pay", "denied" => "The tool call was denied."}
             ]},
            {%{"call-0" => :approve, "call-1" => false}, %{"call-2" => {:failed, "It broke."}},
             [
               %{"name" => "compute", "failed" => "It broke."},
               %{"name" => "delete", "content" => "deleted a.txt"},
               %{"name" => "pay", "denied" => "The tool call was denied."}
             ]}
          ] do
        assert {:ok, result} =
                 Agent.run_sync(name, nil,
                   message_history: first,
                   deferred_tool_results: [approvals: approvals, calls: calls]
                 )

        assert returns(result) == expected
      end
    end

    test "an Elixir tool declared as needing approval" do
      name = start_agent!("ops_agent")
      test = self()

      note = note_tool(test)

      {:ok, first} = Agent.run_sync(name, script([{"note", %{text: "hi"}}]), tools: [note])

      assert %DeferredToolRequests{
               approvals: [
                 %Call{tool_name: "note", tool_call_id: "call-0", args: %{"text" => "hi"}}
               ],
               calls: []
             } = first.output

      refute_received {:noted, _}

      assert {:ok, result} =
               Agent.run_sync(name, nil,
                 message_history: first,
                 tools: [note],
                 deferred_tool_results: %{
                   approvals: %{"call-0" => {:approve, %{"text" => "edited"}}}
                 }
               )

      assert_received {:noted, "edited"}
      assert returns(result) == [%{"name" => "note", "content" => "noted edited"}]
    end

    test "decisions that do not match the deferred calls fail the run and lose nothing" do
      name = start_agent!("ops_agent")
      {:ok, first} = Agent.run_sync(name, script([{"delete", %{path: "a.txt"}}]))

      for approvals <- [%{"call-0" => true, "nope" => true}, %{}] do
        assert {:error, %Error{kind: :invalid_argument, message: message}} =
                 Agent.run_sync(name, nil,
                   message_history: first,
                   deferred_tool_results: %{approvals: approvals}
                 )

        assert message =~ "deferred tool calls"
      end

      # The same history, resumed with the right decisions.
      assert {:ok, result} =
               Agent.run_sync(name, nil,
                 message_history: first,
                 deferred_tool_results: %{approvals: %{"call-0" => true}}
               )

      assert returns(result) == [%{"name" => "delete", "content" => "deleted a.txt"}]
    end

    test "malformed decisions are refused before the run" do
      for bad <- [
            %{approvals: %{"c" => :maybe}},
            %{approvals: %{"c" => {:approve, [1]}}},
            %{approvals: %{"c" => {:deny, :no}}},
            %{approvals: %{c: true}},
            %{calls: %{"c" => 14}},
            %{calls: %{"c" => {:retry, 1}}},
            %{metadata: %{"c" => [1]}},
            %{approvals: [{"c", true}]},
            # Text that is not UTF-8: protobuf strings cannot carry it.
            %{approvals: %{<<0xFF, "c">> => true}},
            %{approvals: %{"c" => {:deny, <<0xFF>>}}},
            %{calls: %{"c" => {:retry, <<0xC3>>}}},
            %{calls: %{"c" => {:failed, <<0xFF>>}}},
            %{metadata: %{<<0xFF>> => %{}}},
            %{approval: %{}},
            [1, 2],
            "yes"
          ] do
        assert_raise ArgumentError, ~r/deferred_tool_results/, fn ->
          Agent.run_sync(:no_agent, nil, deferred_tool_results: bad)
        end
      end

      # Data with no JSON form, found when the request is made.
      name = start_agent!("ops_agent")
      {:ok, first} = Agent.run_sync(name, script([{"delete", %{path: "a.txt"}}]))

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, nil,
                 message_history: first,
                 deferred_tool_results: %{approvals: %{"call-0" => {:approve, %{"p" => self()}}}}
               )

      assert message =~ "call-0"
    end
  end

  # A process that approves the first call it is asked about.
  defp approver_once do
    spawn_link(fn ->
      receive do
        {:synapse_approval, approval} -> :ok = Agent.approve(approval)
      end
    end)
  end

  describe "inline: the run asks its approver and waits" do
    test "approve, approve with edited arguments, deny with a message" do
      name = start_agent!("inline_agent")
      calls = [{"delete", %{path: "a.txt"}}, {"pay", %{amount: 500}}, {"pay", %{amount: 20}}]
      {:ok, run} = Agent.run(name, script(calls), approver: self())

      assert_receive {:synapse_approval, %Approval{tool_name: "delete"} = delete}, 30_000
      assert_receive {:synapse_approval, %Approval{tool_name: "pay"} = pay}, 30_000
      # pay(20) needs no approval.
      refute_received {:synapse_approval, _}

      assert %Approval{agent: ^name, args: %{"path" => "a.txt"}, metadata: nil} = delete
      assert %Approval{args: %{"amount" => 500}, metadata: %{"limit" => 100}} = pay
      assert delete.id != pay.id

      assert :ok = Agent.deny(delete, "Not that file.")
      assert_receive {:synapse_approval_closed, id, {:denied, "Not that file."}}
      assert id == delete.id
      assert :ok = Agent.approve(pay, %{"amount" => 50})
      assert_receive {:synapse_approval_closed, id, {:approved, %{"amount" => 50}}}
      assert id == pay.id

      assert {:ok, result} = Agent.await(run)
      assert result.output_type == "str"

      assert returns(result) == [
               %{"name" => "delete", "denied" => "Not that file."},
               %{"name" => "pay", "content" => "paid 50"},
               %{"name" => "pay", "content" => "paid 20"}
             ]

      # Decided already, and the run is over (its runner may still be
      # finishing: either reason may come first).
      assert {:error, %Error{kind: :invalid_argument, details: %{reason: reason}}} =
               Agent.approve(pay)

      assert reason in [:already_settled, :run_ended]
    end

    test "a call's metadata, none or an empty object, is as pydantic-ai gives it" do
      name = start_agent!("inline_agent")
      calls = [{"delete", %{path: "a.txt"}}, {"review", %{x: 1}}]

      # What pydantic-ai gives its deferred-calls handler: the same calls' metadata.
      [[direct]] =
        Fidelity.direct_run!([
          %{"agent" => "#{@fixtures}:ops_agent", "turns" => [%{"prompt" => script(calls)}]}
        ])

      python = Map.new(direct["output"]["approvals"], &{&1["tool_name"], &1["metadata"]})
      assert python == %{"delete" => nil, "review" => %{}}

      {:ok, run} = Agent.run(name, script(calls), approver: self())
      assert_receive {:synapse_approval, %Approval{tool_name: "delete"} = delete}, 30_000
      assert_receive {:synapse_approval, %Approval{tool_name: "review"} = review}, 30_000
      assert %{"delete" => delete.metadata, "review" => review.metadata} == python

      :ok = Agent.approve(delete)
      :ok = Agent.approve(review)
      assert {:ok, result} = Agent.await(run)

      assert returns(result) == [
               %{"name" => "delete", "content" => "deleted a.txt"},
               %{"name" => "review", "content" => "reviewed 1"}
             ]
    end

    test "run_sync, run_stream and an Elixir tool needing approval" do
      name = start_agent!("inline_agent")
      test = self()

      note = note_tool(test)

      approver =
        spawn_link(fn ->
          for _ <- 1..2 do
            receive do
              {:synapse_approval, approval} ->
                send(test, {:asked, approval.tool_name})
                :ok = Agent.approve(approval)
            end
          end
        end)

      calls = [{"note", %{text: "hi"}}, {"delete", %{path: "b"}}]

      assert {:ok, result} =
               Agent.run_sync(name, script(calls), tools: [note], approver: approver)

      assert_received {:asked, "note"}
      assert_received {:asked, "delete"}

      assert returns(result) == [
               %{"name" => "delete", "content" => "deleted b"},
               %{"name" => "note", "content" => "noted hi"}
             ]

      events =
        name
        |> Agent.run_stream(script([{"delete", %{path: "c"}}]), approver: approver_once())
        |> Enum.to_list()

      assert {:result, %Result{} = streamed} = List.last(events)
      assert returns(streamed) == [%{"name" => "delete", "content" => "deleted c"}]
    end

    test "a request nobody answers in time is denied, and the model told so" do
      name = start_agent!("inline_agent")

      {:ok, run} =
        Agent.run(name, script([{"delete", %{path: "a.txt"}}]),
          approver: self(),
          approval_timeout: 200
        )

      assert_receive {:synapse_approval, approval}, 30_000
      assert_receive {:synapse_approval_closed, id, :timed_out}, 5_000
      assert id == approval.id
      assert {:ok, result} = Agent.await(run)

      assert returns(result) == [
               %{
                 "name" => "delete",
                 "denied" => "Nobody decided on this tool call within 200 ms."
               }
             ]
    end

    test "the run's deadline ends a run that waits, keeping what it did" do
      name = start_agent!("inline_agent")

      {:ok, run} =
        Agent.run(name, script([{"delete", %{path: "a.txt"}}]), approver: self(), timeout: 1_500)

      assert_receive {:synapse_approval, approval}, 30_000

      assert {:error, %Error{kind: :timeout, details: %{messages: messages}}} = Agent.await(run)
      assert {"delete", %{"path" => "a.txt"}} in Fidelity.tool_calls(messages.json)
      assert_receive {:synapse_approval_closed, _, :run_ended}, 5_000

      assert {:error, %Error{kind: :invalid_argument, details: %{reason: :run_ended}}} =
               Agent.approve(approval)
    end

    test "the caller exiting cancels the run and closes its requests" do
      name = start_agent!("inline_agent")
      test = self()

      caller =
        spawn(fn ->
          {:ok, _run} = Agent.run(name, script([{"delete", %{path: "a.txt"}}]), approver: test)
          Process.sleep(:infinity)
        end)

      assert_receive {:synapse_approval, approval}, 30_000
      Process.exit(caller, :kill)
      assert_receive {:synapse_approval_closed, id, :run_ended}, 5_000
      assert id == approval.id
    end

    test "bad decisions get a typed error and the request stays open" do
      name = start_agent!("inline_agent")
      {:ok, run} = Agent.run(name, script([{"delete", %{path: "a.txt"}}]), approver: self())
      assert_receive {:synapse_approval, approval}, 30_000

      assert {:error, %Error{kind: :invalid_argument}} = Agent.approve(approval, [1])
      assert {:error, %Error{kind: :invalid_argument}} = Agent.deny(approval, :no)
      # Accepted by Elixir, refused by the NIF: no JSON form, not UTF-8.
      assert {:error, %Error{kind: :invalid_argument}} = Agent.approve(approval, %{"p" => self()})
      assert {:error, %Error{kind: :invalid_argument}} = Agent.deny(approval, <<0xFF>>)

      assert {:error, %Error{kind: :invalid_argument, details: %{reason: :unknown_request}}} =
               Agent.approve(%{approval | request_id: "99"})

      assert {:error, %Error{kind: :invalid_argument}} = Agent.approve(:not_an_approval)
      assert_raise ArgumentError, fn -> Agent.approve(approval, nil, timeout: 0) end
      refute_received {:synapse_approval_closed, _, _}

      assert :ok = Agent.approve(approval, %{"path" => "b.txt"})

      # Settled, and the run may be over already (its only call is decided).
      assert {:error, %Error{kind: :invalid_argument, details: %{reason: reason}}} =
               Agent.deny(approval)

      assert reason in [:already_settled, :run_ended]

      assert {:ok, result} = Agent.await(run)
      assert returns(result) == [%{"name" => "delete", "content" => "deleted b.txt"}]
    end

    test "a call whose approvers all exit undecided is denied then, not at the run's timeout" do
      name = start_agent!("inline_agent")
      test = self()
      delete = script([{"delete", %{path: "a.txt"}}])
      denied = [%{"name" => "delete", "denied" => "Nobody can approve this tool call."}]

      # An approver that is dead before the call is made.
      dead = spawn(fn -> :ok end)
      monitor = Process.monitor(dead)
      assert_receive {:DOWN, ^monitor, :process, _, _}
      assert {:ok, result} = Agent.run_sync(name, delete, approver: dead, timeout: 30_000)
      assert returns(result) == denied

      # Two approvers in a group, both gone without deciding (a screen
      # closed, a process crashed): the second exit denies the call.
      scope = :"scope_#{System.unique_integer([:positive])}"
      start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})

      approvers =
        for _ <- 1..2 do
          spawn(fn ->
            :ok = :pg.join(scope, :reviewers, self())
            send(test, {:joined, self()})

            receive do
              {:synapse_approval, approval} -> send(test, {:asked, self(), approval})
            end

            receive do: (:exit -> :ok)
          end)
        end

      for pid <- approvers, do: assert_receive({:joined, ^pid})

      {:ok, run} = Agent.run(name, delete, approver: {:pg, scope, :reviewers}, timeout: 30_000)

      for pid <- approvers, do: assert_receive({:asked, ^pid, %Approval{}}, 30_000)
      for pid <- approvers, do: send(pid, :exit)

      assert {:ok, result} = Agent.await(run)
      assert returns(result) == denied
    end

    test "a decision whose answer comes after approve/3 gave up leaves nothing in the mailbox" do
      name = start_agent!("inline_agent")
      {:ok, run} = Agent.run(name, script([{"delete", %{path: "a.txt"}}]), approver: self())
      assert_receive {:synapse_approval, approval}, 30_000

      # The run's runner is held (a busy or distant node): the decision
      # reaches it only after approve/3 stopped waiting for the answer.
      :erlang.suspend_process(approval.runner)
      assert {:error, %Error{kind: :timeout}} = Agent.approve(approval, nil, timeout: 50)
      :erlang.resume_process(approval.runner)

      # The runner answers the decider before it closes the request.
      assert_receive {:synapse_approval_closed, id, {:approved, nil}}, 30_000
      assert id == approval.id
      assert {:ok, _} = Agent.await(run)

      {:messages, messages} = Process.info(self(), :messages)
      assert for({ref, _} = message when is_reference(ref) <- messages, do: message) == []
    end

    test "approvers by name: registered, {:via, ...}, :pg (first decision wins), nobody" do
      name = start_agent!("inline_agent")
      registered = :"approver_#{System.unique_integer([:positive])}"
      Process.register(self(), registered)
      registry = :"registry_#{System.unique_integer([:positive])}"
      start_supervised!({Registry, keys: :unique, name: registry})
      {:ok, _} = Registry.register(registry, :approver, nil)
      delete = script([{"delete", %{path: "a.txt"}}])

      # {:global, name} and {:pg, group} whose second element is an atom
      # too: not taken for {name, node}.
      global = :"global_approver_#{System.unique_integer([:positive])}"
      :yes = :global.register_name(global, self())
      on_exit(fn -> :global.unregister_name(global) end)

      case :pg.start_link() do
        {:ok, _} -> :ok
        {:error, {:already_started, _}} -> :ok
      end

      group = :"approver_group_#{System.unique_integer([:positive])}"
      :ok = :pg.join(group, self())

      for approver <- [
            registered,
            {registered, node()},
            {:via, Registry, {registry, :approver}},
            {:global, global},
            {:pg, group}
          ] do
        {:ok, run} = Agent.run(name, delete, approver: approver)
        assert_receive {:synapse_approval, approval}, 30_000
        :ok = Agent.approve(approval)
        assert {:ok, _} = Agent.await(run)
      end

      scope = :"scope_#{System.unique_integer([:positive])}"
      start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
      first = TestListener.start(self(), {scope, :reviewers})
      second = TestListener.start(self(), {scope, :reviewers})
      # Two calls at one step: the run waits for both decisions, so the
      # first call's second decision meets a run still going (once the run
      # is over, a decision gets `:run_ended` instead).
      both = script([{"delete", %{path: "a.txt"}}, {"delete", %{path: "b.txt"}}])
      {:ok, run} = Agent.run(name, both, approver: {:pg, scope, :reviewers})

      [a, b] = approvals_heard(first, 2)
      assert approvals_heard(second, 2) == [a, b]
      assert :ok = TestListener.decide(second, :deny, a, "No.")

      assert {:error, %Error{details: %{reason: :already_settled}}} =
               TestListener.decide(first, :approve, a, nil)

      assert :ok = TestListener.decide(first, :approve, b, nil)

      for approver <- [first, second] do
        assert_receive {^approver, _, {:synapse_approval_closed, id, {:denied, "No."}}}
        assert id == a.id
        assert_receive {^approver, _, {:synapse_approval_closed, id, {:approved, nil}}}
        assert id == b.id
      end

      assert {:ok, result} = Agent.await(run)

      assert Enum.sort(returns(result)) ==
               Enum.sort([
                 %{"name" => "delete", "denied" => "No."},
                 %{"name" => "delete", "content" => "deleted b.txt"}
               ])

      # Nobody to ask: denied at once.
      for nobody <- [:"nobody_#{System.unique_integer([:positive])}", {:pg, scope, :empty}] do
        assert {:ok, result} = Agent.run_sync(name, delete, approver: nobody)

        assert returns(result) == [
                 %{"name" => "delete", "denied" => "Nobody can approve this tool call."}
               ]
      end
    end

    test "bad approvers are refused with the option's name" do
      for bad <- ["me", {:pg}, {:via, "m", :x}, 12] do
        assert_raise ArgumentError, ~r/:approver/, fn ->
          Agent.run_sync(:no_agent, "hi", approver: bad)
        end
      end

      # Atoms no process can be registered under: not taken for names (nil is no approver).
      for {bad, shown} <- [
            {true, "true"},
            {false, "false"},
            {:undefined, ":undefined"},
            {{true, node()}, "true"},
            {{nil, node()}, "nil"}
          ] do
        error =
          assert_raise ArgumentError, fn -> Agent.run_sync(:no_agent, "hi", approver: bad) end

        assert error.message =~ ":approver"
        assert error.message =~ "#{shown} cannot be a registered name"
      end

      assert_raise ArgumentError, ~r/:approval_timeout/, fn ->
        Agent.run_sync(:no_agent, "hi", approver: self(), approval_timeout: 0)
      end
    end
  end
end
