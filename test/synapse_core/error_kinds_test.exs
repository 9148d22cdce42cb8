defmodule SynapseCore.ErrorKindsTest do
  # The error kinds are declared once, as the wire contract's `ErrorKind`
  # enum: Python uses its generated stubs, Rust its prost enum, Elixir reads
  # the .proto when it compiles. These check that the three agree.
  use ExUnit.Case, async: true

  alias SynapseCore.Error

  defp python_kinds do
    {:ok, python} = SynapseCore.Python.interpreter()

    script = """
    from synapse_python._proto.synapse.v1 import agent_pb2
    from synapse_python._errors import kind_name
    print(" ".join(kind_name(v) for v in agent_pb2.ErrorKind.values() if v))
    """

    {out, 0} =
      System.cmd(python, ["-c", script],
        env: [{"PYTHONPATH", SynapseCore.Python.package_dir()}],
        stderr_to_stdout: true
      )

    out |> String.split() |> Enum.map(&String.to_atom/1)
  end

  defp typespec_kinds do
    {:ok, types} = Code.Typespec.fetch_types(Error)

    [{:type, {:kind, {:type, _, :union, members}, []}}] =
      for {_, {:kind, _, _}} = t <- types, do: t

    for {:atom, _, kind} <- members, do: kind
  end

  test "the Elixir kinds, their type and the Python worker's are the same list" do
    python = python_kinds()
    assert python != []
    assert Error.kinds() == python
    assert Enum.sort(typespec_kinds()) == Enum.sort(python)
  end

  test "every kind is documented, and an error of an unknown kind cannot be built" do
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(Error)
    for kind <- Error.kinds(), do: assert(doc =~ "* `#{inspect(kind)}` - ")

    assert_raise FunctionClauseError, fn -> Error.new(:no_such_kind, "x") end
  end

  test "errors the NIF builds carry kinds of the list" do
    assert {:error, %Error{kind: kind}} = SynapseCore.Native.channel_token(42)
    assert kind in Error.kinds()
  end
end
