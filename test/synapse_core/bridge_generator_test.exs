defmodule SynapseCore.BridgeGeneratorTest do
  # The Elixir side of generation: names decided in Elixir (the module,
  # enum atoms, function names) and what cannot be generated, from IRs
  # written here (no Python needed), and the declarations' own checks.
  #
  # Not async: a client is compiled and its specs read, and while `mix test`
  # is still loading test files, which async modules do not wait for, the
  # compiler keeps no debug info (the specs are read from it).
  use ExUnit.Case, async: false

  alias SynapseCore.Bridge.Generator

  defp ir(overrides \\ %{}) do
    Map.merge(
      %{
        "version" => 2,
        "module" => "pkg.sub_mod",
        "doc" => nil,
        "package" => "synapse.bridge.pkg_sub_mod",
        "service" => "SubMod",
        "functions" => [function("add")],
        "types" => %{}
      },
      overrides
    )
  end

  defp function(name, params \\ [param("x", %{"kind" => "int"})]) do
    %{
      "name" => name,
      "rpc" => Macro.camelize(name),
      "request" => "#{Macro.camelize(name)}Request",
      "response" => "#{Macro.camelize(name)}Response",
      "kind" => "sync",
      "doc" => nil,
      "params" => params,
      "returns" => %{"kind" => "int"}
    }
  end

  defp param(name, type),
    do: %{"name" => name, "type" => type, "required" => true, "constraints" => %{}}

  defp enum_ir(values) do
    values =
      for {{member, python}, number} <- Enum.with_index(values, 1) do
        %{"name" => "E_#{number}", "number" => number, "member" => member, "python" => python}
      end

    ir(%{
      "functions" => [function("pick", [param("e", %{"kind" => "enum", "name" => "E"})])],
      "types" => %{"E" => %{"kind" => "enum", "python" => nil, "doc" => nil, "values" => values}}
    })
  end

  test "the client's module is the Python module camelized, unless named" do
    assert {:ok, {"Pkg.SubMod", source}} = Generator.render(ir(), "")
    assert source =~ "defmodule Pkg.SubMod do\n"
    assert {:ok, {"My.Client", _}} = Generator.render(ir(), "", elixir_module: "My.Client")

    assert Generator.render(ir(), "", elixir_module: "my.client") ==
             {:error, ~s(invalid Elixir module name "my.client")}
  end

  test "enum atoms: an Enum member's name in lower case, a Literal's value" do
    {:ok, {_, source}} =
      Generator.render(enum_ir([{"IN_PROGRESS", "x"}, {nil, "in progress"}]), "")

    assert source =~ ~s(values: [in_progress: "E_1", "in progress": "E_2"])

    {:ok, {_, source}} = Generator.render(enum_ir([{nil, 1}, {nil, -2}]), "")
    assert source =~ ~s(values: [{1, "E_1"}, {-2, "E_2"}])
  end

  test "enum values that are one atom in Elixir, or nil, are refused" do
    assert {:error, message} = Generator.render(enum_ir([{"RED", "r"}, {"red", "R"}]), "")
    assert message == ~s(the values "r" and "R" of E are both :red in Elixir; rename one)

    assert {:error, message} = Generator.render(enum_ir([{"NIL", "n"}]), "")
    assert message == ~s(the value "n" of E would be the Elixir atom nil; rename it)

    assert {:error, _} = Generator.render(enum_ir([{nil, "nil"}]), "")
  end

  test "function names Elixir cannot define are refused, with the way out" do
    # module_info/1 is the one the compiler defines: the client's would never be called.
    for name <- ~w(end Upper __private defbridge module_info) do
      assert {:error, message} = Generator.render(ir(%{"functions" => [function(name)]}), "")
      assert message =~ "pkg.sub_mod.#{name}: "
      assert message =~ "rename it (elixir.functions in the bridge's config)"
    end

    assert {:ok, _} = Generator.render(ir(%{"functions" => [function("_private")]}), "")
  end

  test "a map parameter's typespec takes the atom keys the call accepts" do
    ir =
      ir(%{
        "module" => "spec_maps",
        "functions" => [
          function("count", [param("tags", %{"kind" => "dict", "of" => %{"kind" => "int"}})])
        ]
      })

    {:ok, {_, source}} = Generator.render(ir, "")
    [{module, beam}] = Code.compile_string(source)
    {:ok, specs} = Code.Typespec.fetch_specs(beam)

    [spec] =
      for {{:count, 3}, [spec]} <- specs,
          do: Macro.to_string(Code.Typespec.spec_to_quoted(:count, spec))

    # What the codec sends (atom keys as strings) is what the spec admits;
    # the result, read from the wire, has string keys.
    assert spec =~ "%{optional(String.t() | atom()) => integer()}"
    :code.purge(module)
    :code.delete(module)
  end

  test "distinct Python parameters get distinct Elixir variables" do
    # `_x`, `X` and `arg_x` all ask for `arg_x`: the same variable twice in
    # the head would make a call match only equal arguments.
    params = for name <- ~w(_x arg_x X server server_), do: param(name, %{"kind" => "int"})
    ir = ir(%{"module" => "clashing_params", "functions" => [function("f", params)]})

    {:ok, {_, source}} = Generator.render(ir, "")
    [{module, beam}] = Code.compile_string(source)

    # Distinct arguments reach the call (no agent here: its error, not a FunctionClauseError).
    assert {:error, %SynapseCore.Error{}} = module.f(:no_bridge, 1, 2, 3, 4, 5)

    path = Path.join(System.tmp_dir!(), "#{module}-#{System.unique_integer([:positive])}.beam")
    File.write!(path, beam)
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(path)
    File.rm!(path)
    [signature] = for {{:function, :f, 7}, _, [signature], _, _} <- docs, do: signature
    assert signature == "f(server, arg_x_2, arg_x, arg_x_3, server__2, server_, opts \\\\ [])"
    :code.purge(module)
    :code.delete(module)
  end

  # The docs of a client compiled from `source`, by module, and purged.
  defp compiled_docs(source) do
    for {module, beam} <- Code.compile_string(source), into: %{} do
      path = Path.join(System.tmp_dir!(), "#{module}-#{System.unique_integer([:positive])}.beam")
      File.write!(path, beam)
      docs = Code.fetch_docs(path)
      File.rm!(path)
      :code.purge(module)
      :code.delete(module)
      {module, docs}
    end
  end

  test "carriage returns in docs and descriptions are written as escapes, and kept" do
    field = %{
      "name" => "x",
      "type" => %{"kind" => "int"},
      "required" => true,
      "constraints" => %{},
      "description" => "First line\r\nsecond line"
    }

    ir =
      ir(%{
        "module" => "crlf_docs",
        "functions" => [
          %{
            function("f", [param("m", %{"kind" => "model", "name" => "M"})])
            | "doc" => "One.\r\nTwo."
          }
        ],
        "types" => %{
          "M" => %{
            "kind" => "model",
            "python" => "crlf_docs:M",
            "doc" => nil,
            "fields" => [field]
          }
        }
      })

    {:ok, {_, source}} = Generator.render(ir, "")
    # Raw, a heredoc's CRLF is read as LF by some Elixir versions.
    refute source =~ "\r"

    docs = compiled_docs(source)
    {:docs_v1, _, _, _, %{"en" => model_doc}, _, _} = docs[CrlfDocs.M]
    assert model_doc =~ "First line\r\nsecond line."
    {:docs_v1, _, _, _, _, _, functions} = docs[CrlfDocs]
    [doc] = for {{:function, :f, 3}, _, _, %{"en" => doc}, _} <- functions, do: doc
    assert doc =~ "One.\r\nTwo.\n"
  end

  test "a default with line breaks is documented as it is" do
    fields = [
      %{"name" => "s", "type" => %{"kind" => "str"}, "default" => "a\nb"},
      %{
        "name" => "l",
        "type" => %{"kind" => "list", "of" => %{"kind" => "str"}},
        "default" => ["x\r\ny"]
      }
    ]

    fields = Enum.map(fields, &Map.merge(&1, %{"required" => false, "constraints" => %{}}))

    ir =
      ir(%{
        "module" => "multiline_defaults",
        "functions" => [function("f", [param("m", %{"kind" => "model", "name" => "M"})])],
        "types" => %{
          "M" => %{
            "kind" => "model",
            "python" => "multiline_defaults:M",
            "doc" => nil,
            "fields" => fields
          }
        }
      })

    {:ok, {_, source}} = Generator.render(ir, "")
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = compiled_docs(source)[MultilineDefaults.M]
    assert doc =~ ~S(Defaults to `"a\nb"`.)
    assert doc =~ ~S(Defaults to `["x\r\ny"]`.)
  end

  test "Python parameters named as Elixir keywords, fn among them, are variables that compile" do
    params = for name <- ~w(fn end when), do: param(name, %{"kind" => "int"})
    ir = ir(%{"module" => "keyword_params", "functions" => [function("f", params)]})

    {:ok, {_, source}} = Generator.render(ir, "")
    assert {:docs_v1, _, _, _, _, _, docs} = compiled_docs(source)[KeywordParams]
    [signature] = for {{:function, :f, 5}, _, [signature], _, _} <- docs, do: signature
    assert signature == "f(server, fn_, end_, when_, opts \\\\ [])"
  end

  test "an IR of another version is refused" do
    assert {:error, message} = Generator.render(ir(%{"version" => 1}), "")
    assert message =~ "the bridge IR has version 1, this Synapse reads version 2"
  end

  test "declarations are checked when the client compiles" do
    source = """
    defmodule SynapseCore.BridgeGeneratorTest.Bad do
      use SynapseCore.Bridge.Client, python_module: "m", service: "p.S", descriptor: ""
      defbridge(:f, rpc: "F", params: [x: Missing], returns: :int64)
    end
    """

    assert_raise ArgumentError, ~r/defbridge :f, x: unknown type Missing/, fn ->
      Code.compile_string(source)
    end
  end
end
