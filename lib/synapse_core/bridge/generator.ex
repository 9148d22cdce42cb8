defmodule SynapseCore.Bridge.Generator do
  @moduledoc false
  # The Elixir client of a bridge, rendered from its intermediate
  # representation (the `.ir.json` the Python generator writes, decoded) and
  # its descriptor set: a module that `use`s SynapseCore.Bridge.Client, with
  # one declaration per custom type, enum, model and function, formatted
  # with Code.format_string!. The Elixir names are decided here: the module
  # (the Python module camelized, unless given), enum atoms (an Enum
  # member's name in lower case, a Literal's value), function names (the
  # Python names, unless renamed).
  #
  # The output is a function of its input only, so the same IR gives the
  # same bytes (`mix synapse.gen.bridge --check` compares them).

  @ir_version 2

  # Source text written as it is (a name, a heredoc): only this module makes one.
  defmodule Raw do
    @moduledoc false
    defstruct [:text]
  end

  # Functions every module has: a client's own of that name and arity would
  # never be called (module_info/1 is the compiler's, whatever the client defines).
  @taken ~w(module_info)
  @constraints ~w(gt ge lt le multiple_of min_length max_length pattern)

  @typedoc """
  Options: `:elixir_module` (the client's name), `:functions` (Python name
  => Elixir name), `:types` (a custom type's Python name => its Elixir
  conversion, `%{module:, encode:, decode:, spec:}`), `:regenerate` (the
  command line recorded in the module's doc).
  """
  @type options :: [
          elixir_module: String.t() | nil,
          functions: %{String.t() => String.t()},
          types: %{String.t() => map()},
          regenerate: String.t() | nil
        ]

  @doc """
  The client's module name and its formatted source, or a message naming
  what cannot be generated.
  """
  @spec render(map(), binary(), options()) ::
          {:ok, {String.t(), String.t()}} | {:error, String.t()}
  def render(ir, descriptor, opts \\ []) do
    with :ok <- check_version(ir),
         {:ok, module} <- elixir_module(ir, opts[:elixir_module]),
         {:ok, names} <- function_names(ir, Map.new(opts[:functions] || %{})),
         {:ok, types} <- types(ir, Map.new(opts[:types] || %{})) do
      functions = Enum.map(ir["functions"], &function(&1, names, ir))
      source = source(module, ir, descriptor, types ++ functions, opts[:regenerate])
      {:ok, {module, IO.iodata_to_binary([Code.format_string!(source), "\n"])}}
    end
  end

  @doc "The client module's name when none is given: `pkg.sub_mod` gives `Pkg.SubMod`."
  @spec default_module(String.t()) :: String.t()
  def default_module(python_module) do
    python_module |> String.split(".") |> Enum.map_join(".", &Macro.camelize/1)
  end

  defp check_version(%{"version" => @ir_version}), do: :ok

  defp check_version(ir) do
    {:error,
     "the bridge IR has version #{inspect(ir["version"])}, this Synapse reads version " <>
       "#{@ir_version}: regenerate it with this Synapse's Python package"}
  end

  defp elixir_module(ir, nil), do: elixir_module(ir, default_module(ir["module"]))

  defp elixir_module(_ir, name) do
    if String.match?(name, ~r/^[A-Z][A-Za-z0-9_]*(\.[A-Z][A-Za-z0-9_]*)*$/),
      do: {:ok, name},
      else: {:error, "invalid Elixir module name #{inspect(name)}"}
  end

  ## Functions

  defp function_names(ir, renames) do
    python = Enum.map(ir["functions"], & &1["name"])

    case Map.keys(renames) -- python do
      [] ->
        names = Map.new(python, &{&1, Map.get(renames, &1, &1)})

        with :ok <- Enum.reduce_while(python, :ok, &check_function_name(&1, names[&1], ir, &2)),
             :ok <- unique(names) do
          {:ok, names}
        end

      unknown ->
        {:error,
         "the bridge renames #{Enum.map_join(unknown, ", ", &inspect/1)}, which " <>
           "#{ir["module"]} does not export (it exports #{Enum.join(python, ", ")})"}
    end
  end

  defp check_function_name(python, elixir, ir, :ok) do
    cond do
      not String.match?(elixir, ~r/^[a-z_][a-zA-Z0-9_]*$/) or String.starts_with?(elixir, "__") ->
        {:halt, {:error, "#{ir["module"]}.#{python}: #{inspect(elixir)} #{rename_hint()}"}}

      elixir in @taken or
          String.to_atom(elixir) in (SynapseCore.Bridge.Client.reserved_words() ++
                                       SynapseCore.Bridge.Client.declaration_names()) ->
        {:halt,
         {:error,
          "#{ir["module"]}.#{python}: the Elixir client cannot define a function named " <>
            "#{elixir}; rename it (elixir.functions in the bridge's config)"}}

      true ->
        {:cont, :ok}
    end
  end

  defp rename_hint,
    do:
      "is not a valid name for an Elixir function; rename it (elixir.functions in the bridge's config)"

  defp unique(names) do
    names
    |> Enum.group_by(&elem(&1, 1), &elem(&1, 0))
    |> Enum.find(fn {_, pythons} -> length(pythons) > 1 end)
    |> case do
      nil ->
        :ok

      {elixir, pythons} ->
        {:error,
         "the functions #{Enum.join(Enum.sort(pythons), " and ")} would both be #{elixir} in Elixir"}
    end
  end

  defp function(function, names, ir) do
    {params, options} = Enum.split_with(function["params"], & &1["required"])
    name = Map.fetch!(names, function["name"])

    opts =
      [
        doc: function["doc"],
        rpc: function["rpc"],
        kind: function["kind"] != "sync" && String.to_atom(function["kind"]),
        on_loop: function["on_loop"] == true,
        python: name != function["name"] && function["name"],
        params: params != [] && Enum.map(params, &field(&1, ir)),
        options: options != [] && Enum.map(options, &field(&1, ir)),
        returns: type(function["returns"], ir)
      ]
      |> Enum.filter(fn {_, value} -> value not in [nil, false] end)

    {"defbridge", code(String.to_atom(name)), opts}
  end

  defp field(field, ir) do
    type = type(field["type"], ir)

    facts =
      [
        description: field["description"],
        default:
          Map.has_key?(field, "default") &&
            {:value, exact(value(field["default"], field["type"], ir))},
        default_factory: field["default_factory"],
        constraints: field["constraints"] != %{} && constraints(field["constraints"])
      ]
      |> Enum.filter(fn {_, fact} -> fact not in [nil, false] end)
      |> Enum.map(fn
        {:default, {:value, value}} -> {:default, value}
        fact -> fact
      end)

    name = String.to_atom(field["name"])
    if facts == [], do: {name, type}, else: {name, [{:type, type} | facts]}
  end

  defp constraints(constraints) do
    known = for key <- @constraints, Map.has_key?(constraints, key), do: key
    other = constraints |> Map.keys() |> Enum.reject(&(&1 in @constraints)) |> Enum.sort()
    for key <- known ++ other, do: {String.to_atom(key), constraints[key]}
  end

  ## Types

  @scalars %{
    "int" => :int64,
    "float" => :double,
    "bool" => :bool,
    "str" => :string,
    "bytes" => :bytes,
    "date" => :date,
    "datetime" => :datetime,
    "none" => :none
  }

  # A declared type (see SynapseCore.Bridge.Client) as source.
  defp type(%{"kind" => kind}, _ir) when is_map_key(@scalars, kind),
    do: Map.fetch!(@scalars, kind)

  defp type(%{"kind" => "optional", "of" => of}, ir), do: {:optional, type(of, ir)}
  defp type(%{"kind" => "list", "of" => of}, ir), do: {:list, type(of, ir)}
  defp type(%{"kind" => "dict", "of" => of}, ir), do: {:map, type(of, ir)}

  defp type(%{"kind" => "tuple", "name" => name}, ir),
    do: {:tuple, Enum.map(ir["types"][name]["items"], &type(&1, ir))}

  defp type(%{"kind" => "union", "name" => name}, ir) do
    {:union,
     for(
       member <- ir["types"][name]["members"],
       do: {String.to_atom(member["field"]), type(member["type"], ir)}
     )}
  end

  defp type(%{"name" => name}, _ir), do: code(name)

  # A default value (the JSON the IR holds) as the Elixir value it stands for.
  defp value(nil, _type, _ir), do: nil
  defp value(value, %{"kind" => "optional", "of" => of}, ir), do: value(value, of, ir)

  defp value(values, %{"kind" => "list", "of" => of}, ir),
    do: Enum.map(values, &value(&1, of, ir))

  defp value(values, %{"kind" => "dict", "of" => of}, ir),
    do: Map.new(values, fn {key, value} -> {key, value(value, of, ir)} end)

  defp value(iso, %{"kind" => "date"}, _ir), do: Date.from_iso8601!(iso)

  defp value(iso, %{"kind" => "datetime"}, _ir) do
    case DateTime.from_iso8601(iso) do
      {:ok, datetime, _offset} -> DateTime.shift_zone!(datetime, "Etc/UTC")
      {:error, _} -> iso |> NaiveDateTime.from_iso8601!() |> DateTime.from_naive!("Etc/UTC")
    end
  end

  defp value(value, %{"kind" => kind, "name" => name}, ir) do
    case {kind, ir["types"][name]} do
      {"enum", enum} ->
        Enum.find_value(enum["values"], value, &(&1["python"] === value && elixir_value(&1)))

      {"tuple", %{"items" => items}} when length(items) == length(value) ->
        items
        |> Enum.zip(value)
        |> Enum.map(fn {item, v} -> value(v, item, ir) end)
        |> List.to_tuple()

      {"model", %{"fields" => fields}} when is_map(value) ->
        types = Map.new(fields, &{&1["name"], &1["type"]})

        Map.new(value, fn {key, v} ->
          {String.to_atom(key), value(v, types[key] || %{"kind" => "str"}, ir)}
        end)

      _ ->
        value
    end
  end

  defp value(value, _type, _ir), do: value

  # A value whose strings are written as literals: a heredoc (what source/1
  # writes for text with line breaks, for docs) ends with a line break the
  # value does not have. Maps are written as literals already.
  defp exact(text) when is_binary(text), do: %Raw{text: literal(text)}
  defp exact(list) when is_list(list), do: Enum.map(list, &exact/1)

  defp exact(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&exact/1) |> List.to_tuple()

  defp exact(value), do: value

  defp types(ir, conversions) do
    declared = Enum.sort(ir["types"])
    customs = for {name, %{"kind" => "custom"} = t} <- declared, do: {name, t}

    with :ok <- unknown_conversions(conversions, customs, ir),
         {:ok, enums} <- enums(declared) do
      customs =
        for {name, custom} <- customs, do: custom(name, custom, conversions[custom["python"]])

      models = for {name, %{"kind" => "model"} = model} <- declared, do: model(name, model, ir)
      {:ok, customs ++ enums ++ models}
    end
  end

  defp unknown_conversions(conversions, customs, ir) do
    known = Enum.map(customs, fn {_, custom} -> custom["python"] end)

    case Map.keys(conversions) -- known do
      [] ->
        :ok

      unknown ->
        {:error,
         "elixir.types names #{Enum.map_join(unknown, ", ", &inspect/1)}, which is not a custom " <>
           "type of the bridge of #{ir["module"]} (custom types: #{inspect(Enum.sort(known))})"}
    end
  end

  defp custom(name, custom, conversion) do
    opts =
      [python: custom["python"], proto: Map.fetch!(@scalars, custom["of"]["kind"])] ++
        if conversion do
          [
            elixir:
              {code(conversion.module), String.to_atom(conversion.encode),
               String.to_atom(conversion.decode)},
            spec: conversion[:spec]
          ]
          |> Enum.reject(&(elem(&1, 1) == nil))
        else
          []
        end

    {"deftype", code(name), opts}
  end

  defp enums(declared) do
    Enum.reduce_while(declared, {:ok, []}, fn
      {name, %{"kind" => "enum"} = enum}, {:ok, acc} ->
        case enum_values(name, enum) do
          {:ok, values} ->
            opts = [python: enum["python"], doc: enum["doc"], values: values]

            {:cont,
             {:ok, acc ++ [{"defenum", code(name), Enum.reject(opts, &(elem(&1, 1) == nil))}]}}

          error ->
            {:halt, error}
        end

      _, acc ->
        {:cont, acc}
    end)
  end

  # The Elixir value of each enum value: an atom (an Enum member's name in
  # lower case, a str Literal's value) or an integer (an int Literal's).
  defp enum_values(name, enum) do
    values = for value <- enum["values"], do: {elixir_value(value), value}

    clash =
      values
      |> Enum.group_by(&elem(&1, 0), &elem(&1, 1)["python"])
      |> Enum.find(fn {_, pythons} -> length(pythons) > 1 end)

    cond do
      Enum.any?(values, &(elem(&1, 0) == nil)) ->
        {_, value} = Enum.find(values, &(elem(&1, 0) == nil))

        {:error,
         "the value #{inspect(value["python"])} of #{name} would be the Elixir atom nil; rename it"}

      clash ->
        {elixir, [a, b | _]} = clash

        {:error,
         "the values #{inspect(a)} and #{inspect(b)} of #{name} are both #{inspect(elixir)} in Elixir; rename one"}

      true ->
        {:ok, for({elixir, value} <- values, do: {elixir, value["name"]})}
    end
  end

  defp elixir_value(%{"member" => member}) when is_binary(member),
    do: member |> String.downcase() |> String.to_atom()

  defp elixir_value(%{"python" => python}) when is_binary(python), do: String.to_atom(python)
  defp elixir_value(%{"python" => python}), do: python

  defp model(name, model, ir) do
    opts =
      [
        python: model["python"],
        doc: model["doc"],
        fields: Enum.map(model["fields"], &field(&1, ir))
      ]
      |> Enum.reject(&(elem(&1, 1) in [nil, []]))

    {"defmodel", code(name), opts}
  end

  ## Source

  defp source(module, ir, descriptor, declarations, regenerate) do
    client =
      [
        python_module: ir["module"],
        service: "#{ir["package"]}.#{ir["service"]}",
        doc: ir["doc"],
        regenerate: regenerate,
        descriptor: heredoc(descriptor |> Base.encode64() |> chunks(76) |> Enum.join("\n"))
      ]
      |> Enum.reject(&(elem(&1, 1) == nil))

    body =
      Enum.map_join(declarations, "\n\n", fn {macro, name, opts} ->
        "#{macro} #{source(name)}, #{keyword(opts)}"
      end)

    """
    defmodule #{module} do
    use SynapseCore.Bridge.Client, #{keyword(client)}

    #{body}
    end
    """
  end

  defp chunks("", _size), do: []

  defp chunks(text, size) when byte_size(text) <= size, do: [text]

  defp chunks(text, size) do
    <<chunk::binary-size(size), rest::binary>> = text
    [chunk | chunks(rest, size)]
  end

  # A name written as is (an alias).
  defp code(text) when is_binary(text), do: %Raw{text: text}
  defp code(atom) when is_atom(atom), do: %Raw{text: inspect(atom)}

  defp keyword(pairs),
    do:
      Enum.map_join(pairs, ", ", fn {key, value} ->
        "#{Macro.inspect_atom(:key, key)} #{source(value)}"
      end)

  defp source(%Raw{text: text}), do: text

  defp source(text) when is_binary(text) do
    if String.contains?(text, "\n") and String.valid?(text),
      do: source(heredoc(text)),
      else: literal(text)
  end

  defp source([{key, _} | _] = pairs) when is_atom(key) do
    if Keyword.keyword?(pairs),
      do: "[#{keyword(pairs)}]",
      else: "[#{Enum.map_join(pairs, ", ", &source/1)}]"
  end

  defp source(list) when is_list(list), do: "[#{Enum.map_join(list, ", ", &source/1)}]"

  defp source(tuple) when is_tuple(tuple),
    do: "{#{tuple |> Tuple.to_list() |> Enum.map_join(", ", &source/1)}}"

  defp source(value), do: literal(value)

  # A string as a heredoc (escaped: it holds text, not code). A carriage
  # return is written as `\r`: raw, how a heredoc reads it depends on the
  # Elixir version (some turn a CRLF into a LF), and a docstring or a
  # description with `\r\n` must say the same in every one.
  defp heredoc(text) do
    escaped =
      text
      |> String.replace("\\", "\\\\")
      |> String.replace("\#{", "\\\#{")
      |> String.replace(~s("""), ~s(\\"""))
      |> String.replace("\r", "\\r")

    %Raw{text: ~s("""\n#{escaped}\n""")}
  end

  defp literal(value),
    do: inspect(value, charlists: :as_lists, limit: :infinity, printable_limit: :infinity)
end
