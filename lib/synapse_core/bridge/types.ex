defmodule SynapseCore.Bridge.Types do
  @moduledoc false
  # The types of a client's declarations (see SynapseCore.Bridge.Client) at
  # compile time: names resolved to the modules the client defines, their
  # typespecs, and the facts the docs list about a parameter or a field.

  alias SynapseCore.Bridge.Codec

  @scalars [:none | Codec.scalars()]

  @doc "What the declarations of `client` name: short names to modules or custom types."
  def context(client, declarations) do
    names =
      for {kind, name, opts} <- declarations, kind != :function, into: %{} do
        case kind do
          :custom -> {short(name), custom(name, opts)}
          _ -> {short(name), Module.concat(client, short(name))}
        end
      end

    kinds =
      for {kind, name, _} <- declarations,
          kind in [:model, :enum],
          into: %{},
          do: {Module.concat(client, short(name)), kind}

    %{client: client, names: names, kinds: kinds}
  end

  @doc "The name a declaration gives: the last part of an alias (`InputData`)."
  def short(name) when is_atom(name) do
    case Module.split(name) do
      [short] -> short
      _ -> raise ArgumentError, "a bridge type is named by one alias, got: #{inspect(name)}"
    end
  end

  defp custom(name, opts) do
    opts = Keyword.validate!(opts, [:python, :proto, elixir: nil, spec: nil])
    scalar = opts[:proto]

    unless scalar in Codec.scalars() do
      raise ArgumentError,
            "deftype #{short(name)}: :proto must be a scalar, got: #{inspect(scalar)}"
    end

    conversion = opts[:elixir]

    if conversion != nil do
      check_conversion!(short(name), opts[:python], conversion)
    end

    spec =
      cond do
        opts[:spec] -> Code.string_to_quoted!(opts[:spec])
        conversion -> quote(do: term())
        true -> nil
      end

    {:custom, scalar, conversion, spec}
  end

  defp check_conversion!(name, python, {module, encode, decode})
       when is_atom(module) and is_atom(encode) and is_atom(decode) do
    case Code.ensure_compiled(module) do
      {:module, ^module} ->
        :ok

      {:error, reason} ->
        raise ArgumentError,
              "the custom type #{name} (Python #{python}) converts with #{inspect(module)}, which is not available (#{reason})"
    end

    for function <- [encode, decode], not function_exported?(module, function, 1) do
      raise ArgumentError,
            "the custom type #{name} (Python #{python}) converts with " <>
              "#{inspect(module)}.#{function}/1, which is not defined"
    end
  end

  defp check_conversion!(name, _python, other) do
    raise ArgumentError,
          "deftype #{name}: :elixir must be {module, encode, decode}, got: #{inspect(other)}"
  end

  @doc """
  A declared type with its names resolved: models and enums become their
  modules, custom types `{:custom, scalar, conversion}`. `where` starts the
  error message of an unknown name.
  """
  def resolve(type, context, where) do
    case type do
      scalar when scalar in @scalars ->
        scalar

      {kind, inner} when kind in [:optional, :list, :map] ->
        {kind, resolve(inner, context, where)}

      {:tuple, items} when is_list(items) ->
        {:tuple, Enum.map(items, &resolve(&1, context, where))}

      {:union, members} when is_list(members) ->
        {:union, for({field, member} <- members, do: {field, resolve(member, context, where)})}

      name when is_atom(name) ->
        case Map.fetch(context.names, short(name)) do
          {:ok, {:custom, scalar, conversion, _spec}} ->
            {:custom, scalar, conversion}

          {:ok, module} ->
            module

          :error ->
            raise ArgumentError,
                  "#{where}: unknown type #{inspect(name)} (declare it with defmodel, defenum or deftype)"
        end

      other ->
        raise ArgumentError, "#{where}: not a bridge type: #{inspect(other)}"
    end
  end

  @doc "The typespec of a resolved type, as the client accepts it (`given`) or returns it."
  def spec(type, given, context) do
    case type do
      :int64 ->
        quote(do: integer())

      :double ->
        if given, do: quote(do: number()), else: quote(do: float())

      :bool ->
        quote(do: boolean())

      :string ->
        quote(do: String.t())

      :bytes ->
        quote(do: binary())

      :date ->
        quote(do: Date.t())

      :datetime when given ->
        quote(do: DateTime.t() | NaiveDateTime.t())

      :datetime ->
        quote(do: DateTime.t())

      :none ->
        nil

      {:optional, inner} ->
        quote(do: unquote(spec(inner, given, context)) | nil)

      {:list, inner} ->
        [spec(inner, given, context)]

      # Given, atom keys are sent as strings (SynapseCore.Bridge.Codec); read,
      # the keys are strings.
      {:map, inner} when given ->
        quote(do: %{optional(String.t() | atom()) => unquote(spec(inner, given, context))})

      {:map, inner} ->
        quote(do: %{optional(String.t()) => unquote(spec(inner, given, context))})

      {:tuple, items} ->
        {:{}, [], Enum.map(items, &spec(&1, given, context))}

      {:union, members} ->
        members |> Enum.map(&spec(elem(&1, 1), given, context)) |> union()

      {:custom, scalar, conversion} ->
        custom_spec(scalar, conversion, context) || spec(scalar, given, context)

      module ->
        module_spec(module, given and context.kinds[module] == :model)
    end
  end

  defp module_spec(module, true), do: quote(do: unquote(module).t() | map())
  defp module_spec(module, false), do: quote(do: unquote(module).t())

  defp custom_spec(_scalar, nil, _context), do: nil

  defp custom_spec(scalar, conversion, context) do
    Enum.find_value(context.names, fn
      {_, {:custom, ^scalar, ^conversion, spec}} -> spec
      _ -> nil
    end)
  end

  @doc "The typespec `a | b | ...` of a list of typespecs."
  def union([one]), do: one
  def union([first | rest]), do: quote(do: unquote(first) | unquote(union(rest)))

  @doc """
  A parameter, option or model field (`name: type` or `name: [type: ...,
  ...]`), resolved: its type, whether it is required, whether an unset list
  or map means "the default" (`presence`), and the facts its doc lists.
  """
  def field({name, opts}, context, where) when is_list(opts) do
    opts =
      Keyword.validate!(opts, [
        :type,
        :default,
        :default_factory,
        description: nil,
        constraints: []
      ])

    type = resolve(Keyword.fetch!(opts, :type), context, "#{where}, #{name}")
    required = not Keyword.has_key?(opts, :default) and opts[:default_factory] == nil

    %{
      name: name,
      type: type,
      required: required,
      # An unset list or map means "the default" unless the default is empty.
      presence:
        not required and not (opts[:default_factory] == nil and opts[:default] in [[], %{}]),
      facts: Keyword.take(opts, [:default, :default_factory, :description, :constraints])
    }
  end

  def field({name, type}, context, where), do: field({name, [type: type]}, context, where)

  @doc "A field's wire type (see SynapseCore.Bridge.Codec)."
  def wire(field), do: Codec.wire_type(field.type, field.presence)

  # What a reader needs to know of a field beyond its type: its description,
  # whether it may be nil, its default and its constraints.
  defp facts(field) do
    facts = field.facts

    [
      facts[:description] && String.trim_trailing(String.trim(facts[:description]), ".") <> ".",
      field.required and match?({:optional, _}, field.type) && "May be `nil`.",
      Keyword.has_key?(facts, :default) &&
        "Defaults to `#{inspect(facts[:default], charlists: :as_lists, limit: :infinity)}`.",
      facts[:default_factory] &&
        "Defaults to the result of `#{String.replace(facts[:default_factory], ":", ".")}()`.",
      facts[:constraints] != [] &&
        "Constraints: #{Enum.map_join(facts[:constraints], ", ", &constraint/1)}.",
      datetime?(field.type) && "A `NaiveDateTime` is taken as UTC."
    ]
    |> Enum.filter(&is_binary/1)
    |> Enum.join(" ")
  end

  defp constraint({key, value}) do
    shown = inspect(value)

    case key do
      :gt -> "`> #{shown}`"
      :ge -> "`>= #{shown}`"
      :lt -> "`< #{shown}`"
      :le -> "`<= #{shown}`"
      :multiple_of -> "a multiple of `#{shown}`"
      :min_length -> "length `>= #{shown}`"
      :max_length -> "length `<= #{shown}`"
      :pattern -> "matches `~r/#{value}/`"
      other -> "#{other} `#{shown}`"
    end
  end

  defp datetime?(:datetime), do: true
  defp datetime?({kind, inner}) when kind in [:optional, :list], do: datetime?(inner)
  defp datetime?(_type), do: false

  @doc "A field's line in a doc's list: its name, typespec and facts."
  def bullet(label, field, given, context) do
    type = field.type |> spec(given, context) |> Macro.to_string()

    case facts(field) do
      "" -> "  * #{label} (`#{type}`)"
      facts -> "  * #{label} (`#{type}`) - #{facts}"
    end
  end
end
