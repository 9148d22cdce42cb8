defmodule SynapseCore.Schema do
  @moduledoc """
  A small type language for tool parameters (and structured output), its
  translation to JSON Schema, and validation of JSON data against the JSON
  Schema subset Synapse supports.

  ## Types

    * `:string`, `:integer`, `:number`, `:boolean`, `:any`
    * `{:list, type}` - a list of `type`
    * `{:enum, values}` - one of `values` (strings, atoms, numbers)
    * `{:map, fields}` - an object with the given fields

  `fields` is a keyword list of `name: type` or `name: options`, where the
  options are `type:` (required), `description:`, `required:` (default
  `true`) and `default:`.

      iex> SynapseCore.Schema.to_json_schema(city: :string, days: [type: :integer, required: false])
      %{
        "type" => "object",
        "properties" => %{"city" => %{"type" => "string"}, "days" => %{"type" => "integer"}},
        "required" => ["city"],
        "additionalProperties" => false
      }

  ## The JSON Schema subset

  `validate/2` understands `type` (a name or a list of names), `properties`,
  `required`, `additionalProperties` (a boolean), `items`, `enum`, `const`,
  `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`,
  `maxLength` (counted in code points), `pattern` (searched, not anchored),
  `minItems`, `maxItems` and `anyOf`; `title`, `description`, `default`,
  `examples` and `format` are annotations. The Python worker validates
  structured output with the same subset. Integers are numbers; `1.0` is not
  an integer; booleans are neither.
  """

  @type type ::
          :string
          | :integer
          | :number
          | :boolean
          | :any
          | {:list, type()}
          | {:enum, [String.t() | atom() | number()]}
          | {:map, fields()}

  @type field :: type() | keyword()
  @type fields :: [{atom(), field()}]

  @typedoc "A JSON Schema, as a map with string keys."
  @type json_schema :: %{optional(String.t()) => term()}

  @doc """
  Translates fields (or a single type) to JSON Schema. Raises
  `ArgumentError` for an invalid type.

      iex> SynapseCore.Schema.to_json_schema({:list, {:enum, [:low, :high]}})
      %{"type" => "array", "items" => %{"enum" => ["low", "high"]}}

      iex> SynapseCore.Schema.to_json_schema(
      ...>   tags: [type: {:list, :string}, description: "Labels", default: []]
      ...> )["properties"]["tags"]
      %{"type" => "array", "items" => %{"type" => "string"}, "description" => "Labels", "default" => []}
  """
  @spec to_json_schema(fields() | type()) :: json_schema()
  def to_json_schema(fields) when is_list(fields), do: object(fields)
  def to_json_schema(type), do: type_schema(type)

  defp object(fields) do
    unless Keyword.keyword?(fields) do
      raise ArgumentError, "fields must be a keyword list, got: #{inspect(fields)}"
    end

    {properties, required} =
      Enum.reduce(fields, {%{}, []}, fn {name, spec}, {properties, required} ->
        options = field_options!(name, spec)

        schema =
          options[:type]
          |> type_schema()
          |> put_present("description", options[:description])
          |> put_present("default", options[:default])

        required =
          if Keyword.get(options, :required, true),
            do: [to_string(name) | required],
            else: required

        {Map.put(properties, to_string(name), schema), required}
      end)

    %{
      "type" => "object",
      "properties" => properties,
      "required" => Enum.reverse(required),
      "additionalProperties" => false
    }
  end

  defp field_options!(name, spec) when is_list(spec) do
    unless Keyword.keyword?(spec) do
      raise ArgumentError,
            "the options of field #{inspect(name)} must be a keyword list, got: #{inspect(spec)}"
    end

    unless Keyword.has_key?(spec, :type) do
      raise ArgumentError, "field #{inspect(name)} has no :type"
    end

    Keyword.validate!(spec, [:type, :description, :required, :default])
  end

  defp field_options!(_name, type), do: [type: type]

  defp type_schema(:string), do: %{"type" => "string"}
  defp type_schema(:integer), do: %{"type" => "integer"}
  defp type_schema(:number), do: %{"type" => "number"}
  defp type_schema(:boolean), do: %{"type" => "boolean"}
  defp type_schema(:any), do: %{}
  defp type_schema({:list, type}), do: %{"type" => "array", "items" => type_schema(type)}
  defp type_schema({:map, fields}), do: object(fields)

  defp type_schema({:enum, [_ | _] = values} = type) do
    if List.improper?(values),
      do: raise(ArgumentError, "the values of #{inspect(type)} are an improper list")

    %{"enum" => Enum.map(values, &enum_value/1)}
  end

  defp type_schema(other), do: raise(ArgumentError, "not a schema type: #{inspect(other)}")

  defp enum_value(value) when is_atom(value) and value not in [nil, true, false],
    do: Atom.to_string(value)

  defp enum_value(value) when is_binary(value) or is_number(value), do: value

  defp enum_value(value),
    do:
      raise(
        ArgumentError,
        "enum values must be strings, atoms or numbers, got: #{inspect(value)}"
      )

  defp put_present(map, _key, nil), do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)

  @doc """
  Converts data validated against `to_json_schema(fields)` to Elixir terms:
  declared keys become the atoms they were declared as, enum values declared
  as atoms become those atoms, and absent fields with a `default:` get it.
  Keys that were not declared are left as strings (a schema with
  `additionalProperties: false` has none).

      iex> SynapseCore.Schema.cast([priority: {:enum, [:low, :high]}, note: [type: :string, required: false, default: ""]],
      ...>   %{"priority" => "high"})
      %{priority: :high, note: ""}
  """
  @spec cast(fields() | type(), term()) :: term()
  def cast(fields, value) when is_list(fields) and is_map(value) do
    Enum.reduce(fields, value, fn {name, spec}, acc ->
      options = field_options!(name, spec)
      key = to_string(name)

      case Map.pop(acc, key) do
        {nil, acc} ->
          if Keyword.has_key?(options, :default),
            do: Map.put(acc, name, options[:default]),
            else: acc

        {present, acc} ->
          Map.put(acc, name, cast(options[:type], present))
      end
    end)
  end

  def cast({:map, fields}, value) when is_map(value), do: cast(fields, value)
  def cast({:list, type}, values) when is_list(values), do: Enum.map(values, &cast(type, &1))

  def cast({:enum, declared}, value) do
    Enum.find(declared, value, fn candidate -> enum_value(candidate) == value end)
  end

  def cast(_type, value), do: value

  @doc """
  Validates JSON data (as decoded: maps with string keys) against a JSON
  Schema of the supported subset. Returns `:ok` or `{:error, problems}`,
  each problem naming where it is (`$` is the root).

      iex> schema = SynapseCore.Schema.to_json_schema(city: :string, days: {:list, :integer})
      iex> SynapseCore.Schema.validate(schema, %{"city" => "Lyon", "days" => [1, 2]})
      :ok
      iex> SynapseCore.Schema.validate(schema, %{"city" => 3, "days" => [1, "x"], "extra" => true})
      {:error, ["$.city: expected string, got integer", "$.days[1]: expected integer, got string",
                "$: unexpected property \\"extra\\""]}
      iex> SynapseCore.Schema.validate(schema, %{"city" => "Lyon"})
      {:error, ["$: missing required property \\"days\\""]}
  """
  @spec validate(json_schema(), term()) :: :ok | {:error, [String.t()]}
  def validate(schema, value) when is_map(schema) do
    case check(schema, value, "$", []) do
      [] -> :ok
      problems -> {:error, Enum.reverse(problems)}
    end
  end

  @annotations ~w(title description default examples format $schema)
  @known ~w(type properties required additionalProperties items enum const minimum maximum
            exclusiveMinimum exclusiveMaximum minLength maxLength pattern minItems maxItems anyOf) ++
           @annotations

  defp check(schema, value, path, problems) do
    case Map.keys(schema) -- @known do
      [] ->
        with [] <- type_problems(schema, value, path) do
          problems
          |> check_enum(schema, value, path)
          |> check_bounds(schema, value, path)
          |> check_string(schema, value, path)
          |> check_array(schema, value, path)
          |> check_object(schema, value, path)
          |> check_any_of(schema, value, path)
        else
          found -> found ++ problems
        end

      unsupported ->
        ["#{path}: the schema uses unsupported keywords #{inspect(unsupported)}" | problems]
    end
  end

  defp type_problems(%{"type" => types}, value, path) do
    types = List.wrap(types)

    if Enum.any?(types, &type?(&1, value)),
      do: [],
      else: ["#{path}: expected #{Enum.join(types, " or ")}, got #{json_type(value)}"]
  end

  defp type_problems(_schema, _value, _path), do: []

  defp type?("string", value), do: is_binary(value)
  defp type?("integer", value), do: is_integer(value)
  defp type?("number", value), do: is_number(value)
  defp type?("boolean", value), do: is_boolean(value)
  defp type?("null", value), do: is_nil(value)
  defp type?("object", value), do: is_map(value)
  defp type?("array", value), do: is_list(value)
  defp type?(_unknown, _value), do: false

  defp json_type(value) when is_binary(value), do: "string"
  defp json_type(value) when is_integer(value), do: "integer"
  defp json_type(value) when is_float(value), do: "number"
  defp json_type(value) when is_boolean(value), do: "boolean"
  defp json_type(nil), do: "null"
  defp json_type(value) when is_map(value), do: "object"
  defp json_type(value) when is_list(value), do: "array"
  defp json_type(_value), do: "a value with no JSON form"

  defp check_enum(problems, schema, value, path) do
    problems =
      case schema do
        %{"enum" => allowed} ->
          if Enum.any?(allowed, &json_equal?(&1, value)),
            do: problems,
            else: ["#{path}: must be one of #{inspect(allowed)}" | problems]

        _ ->
          problems
      end

    case schema do
      %{"const" => expected} ->
        if json_equal?(expected, value),
          do: problems,
          else: ["#{path}: must be #{inspect(expected)}" | problems]

      _ ->
        problems
    end
  end

  # JSON has one number type: 1 and 1.0 are equal values.
  defp json_equal?(a, b) when is_number(a) and is_number(b), do: a == b
  defp json_equal?(a, b), do: a === b

  defp check_bounds(problems, schema, value, path) when is_number(value) do
    [
      {"minimum", &>=/2, "at least"},
      {"maximum", &<=/2, "at most"},
      {"exclusiveMinimum", &>/2, "greater than"},
      {"exclusiveMaximum", &</2, "less than"}
    ]
    |> Enum.reduce(problems, fn {key, ok?, words}, acc ->
      case schema do
        %{^key => bound} ->
          if ok?.(value, bound), do: acc, else: ["#{path}: must be #{words} #{bound}" | acc]

        _ ->
          acc
      end
    end)
  end

  defp check_bounds(problems, _schema, _value, _path), do: problems

  defp check_string(problems, schema, value, path) when is_binary(value) do
    # Code points, as JSON Schema (and Python's len) count them.
    length = value |> String.to_charlist() |> length()

    problems
    |> bound(
      schema,
      "minLength",
      length >= Map.get(schema, "minLength", 0),
      "#{path}: must be at least #{schema["minLength"]} characters long"
    )
    |> bound(
      schema,
      "maxLength",
      length <= Map.get(schema, "maxLength", length),
      "#{path}: must be at most #{schema["maxLength"]} characters long"
    )
    |> check_pattern(schema, value, path)
  end

  defp check_string(problems, _schema, _value, _path), do: problems

  defp check_pattern(problems, %{"pattern" => pattern}, value, path) do
    case Regex.compile(pattern, "u") do
      {:ok, regex} ->
        if Regex.match?(regex, value),
          do: problems,
          else: ["#{path}: must match the pattern #{inspect(pattern)}" | problems]

      {:error, _} ->
        [
          "#{path}: the schema's pattern #{inspect(pattern)} is not a valid regular expression"
          | problems
        ]
    end
  end

  defp check_pattern(problems, _schema, _value, _path), do: problems

  defp bound(problems, schema, key, ok?, message) do
    if Map.has_key?(schema, key) and not ok?, do: [message | problems], else: problems
  end

  defp check_array(problems, schema, value, path) when is_list(value) do
    count = length(value)

    problems =
      problems
      |> bound(
        schema,
        "minItems",
        count >= Map.get(schema, "minItems", 0),
        "#{path}: must have at least #{schema["minItems"]} items"
      )
      |> bound(
        schema,
        "maxItems",
        count <= Map.get(schema, "maxItems", count),
        "#{path}: must have at most #{schema["maxItems"]} items"
      )

    case schema do
      %{"items" => items} when is_map(items) ->
        value
        |> Enum.with_index()
        |> Enum.reduce(problems, fn {item, index}, acc ->
          check(items, item, "#{path}[#{index}]", acc)
        end)

      _ ->
        problems
    end
  end

  defp check_array(problems, _schema, _value, _path), do: problems

  defp check_object(problems, schema, value, path) when is_map(value) do
    properties = Map.get(schema, "properties", %{})

    problems =
      schema
      |> Map.get("required", [])
      |> Enum.reduce(problems, fn key, acc ->
        if Map.has_key?(value, key),
          do: acc,
          else: ["#{path}: missing required property #{inspect(key)}" | acc]
      end)

    problems =
      properties
      |> Enum.sort()
      |> Enum.reduce(problems, fn {key, property_schema}, acc ->
        case Map.fetch(value, key) do
          {:ok, property} -> check(property_schema, property, "#{path}.#{key}", acc)
          :error -> acc
        end
      end)

    if Map.get(schema, "additionalProperties", true) == false do
      value
      |> Map.keys()
      |> Enum.reject(&Map.has_key?(properties, &1))
      |> Enum.sort()
      |> Enum.reduce(problems, fn key, acc ->
        ["#{path}: unexpected property #{inspect(key)}" | acc]
      end)
    else
      problems
    end
  end

  defp check_object(problems, _schema, _value, _path), do: problems

  defp check_any_of(problems, %{"anyOf" => choices}, value, path) when is_list(choices) do
    if Enum.any?(choices, &(check(&1, value, path, []) == [])),
      do: problems,
      else: ["#{path}: matches none of the allowed schemas" | problems]
  end

  defp check_any_of(problems, _schema, _value, _path), do: problems
end
