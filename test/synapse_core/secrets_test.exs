defmodule SynapseCore.SecretsTest do
  # The remote token is in no term, log line, error or crash report, however
  # the options around it are wrong.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  require Logger
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Channel, Native}

  @moduletag capture_log: true

  @token "tok-#{System.unique_integer([:positive])}-never-shown"

  defp remote_opts(extra) do
    Keyword.merge(
      [
        name: unique_name(),
        agent: "synapse_fixtures.agents:echo_agent",
        python_path: [fixtures_path()],
        workers: 0,
        # Nothing listens there: connecting is lazy, and these tests are
        # about what happens before and around it.
        remote: ["tcp://127.0.0.1:1"],
        tls: [ca: {:pem, test_ca_pem()}, server_name: "localhost"],
        token: @token,
        max_backoff: 200
      ],
      extra
    )
  end

  defp refute_token(text), do: refute(text =~ @token, "the token shows in: #{text}")

  describe "invalid options next to the token" do
    for {label, extra} <- [
          {"a charlist server name (the form :ssl takes)",
           tls: [ca: {:pem, "x"}, server_name: ~c"localhost"]},
          {"max_message_bytes beyond 4 GiB", max_message_bytes: Integer.pow(2, 64)},
          {"an unknown option", bogus: true},
          {"a charlist token", token: String.to_charlist("tok-charlist-never-shown")}
        ] do
      test "#{label}: ArgumentError without the token" do
        {error, stacktrace} =
          try do
            SynapseCore.start_agent(remote_opts(unquote(Macro.escape(extra))))
            flunk("the options were accepted")
          rescue
            error in ArgumentError -> {error, __STACKTRACE__}
          end

        refute_token(Exception.message(error))
        refute Exception.message(error) =~ "tok-charlist-never-shown"
        refute_token(Exception.format(:error, error, stacktrace))
        refute_token(inspect(stacktrace, limit: :infinity))
      end
    end
  end

  test "a token function returning a charlist: a typed error naming no part of it" do
    secret = "fun-token-never-shown"

    log =
      capture_log(fn ->
        # A permanent misconfiguration: the start fails at once.
        result = SynapseCore.start_agent(remote_opts(token: fn -> String.to_charlist(secret) end))

        assert {:error, %SynapseCore.Error{kind: :invalid_argument}} = result
        refute inspect(result) =~ secret
      end)

    refute log =~ secret
    refute log =~ inspect(String.to_charlist(secret))
  end

  test "the token's way into Rust takes any term and never raises" do
    for bad <- [~c"abc", 42, nil, "", "has space", "tab\tin", <<0xFF>>, {:token, "x"}] do
      assert {:error, %SynapseCore.Error{kind: :invalid_argument} = error} =
               Native.channel_token(bad)

      refute error.message =~ "abc"
    end

    assert {:ok, token} = Native.channel_token(@token)
    assert is_reference(token)
    refute inspect(token) =~ @token

    assert {:error, %SynapseCore.Error{kind: :invalid_argument, message: message}} =
             Channel.connect("tcp://127.0.0.1:1", token: fn -> raise "leak #{@token}" end)

    refute_token(message)
  end

  test "child specs and supervisor reports do not carry the token" do
    opts = remote_opts(workers: 1, agent: "synapse_fixtures.no_such_module:agent")
    spec = Agent.child_spec(opts)
    refute_token(inspect(spec, limit: :infinity))

    Process.flag(:trap_exit, true)

    log =
      capture_log(fn ->
        assert {:error, _} = Supervisor.start_link([spec], strategy: :one_for_one)
        # The supervisor's report is logged by another process: wait for it.
        Logger.flush()
      end)

    # The local worker's import error or the remote's TLS settings, whichever
    # fails first: both are permanent.
    assert log =~ "no_such_module" or log =~ "bad TLS settings"
    refute_token(log)
  end
end
