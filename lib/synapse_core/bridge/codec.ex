defmodule SynapseCore.Bridge.Codec do
  @moduledoc false
  # Elixir values <-> the wire maps the NIF turns into protobuf messages (and
  # back), for the clients `use SynapseCore.Bridge.Client` defines. One copy
  # for every generated client, driven by *wire types*: what a declared type
  # (see SynapseCore.Bridge.Client) becomes once the wire layout is applied
  # (`wire_type/2`):
  #
  #     :int64 | :double | :bool | :string | :bytes | :date | :datetime
  #     {:list, w} | {:map, w} | {:tuple, [w]} | {:union, [{field, w}]}
  #     module                    # a model or an enum of the client
  #     {:custom, scalar, {module, encode, decode} | nil}
  #     {:wrap, w}                # a wrapper message: %{"value" => ...}
  #     {:optional, w}            # only inside a wrapper, where nil is a value
  #
  # Encoding never raises on data: a value of an unexpected shape is passed on
  # unchanged, so that the NIF (what protobuf cannot carry) or Pydantic (the
  # rest) reports it with its path. The exceptions are what only this module
  # sees, and which would otherwise be dropped silently: a map whose atom and
  # string keys name one key, a model given keys that are not its fields; and
  # a custom type's conversion function, which is the user's code: what it
  # raises becomes an error of the call (see SynapseCore.Bridge.Client).

  alias SynapseCore.Error

  @scalars [:int64, :double, :bool, :string, :bytes, :date, :datetime]

  @doc "The scalar types of declarations."
  def scalars, do: @scalars

  ## The wire layout (the rules of the IR's documentation, `_ir.py`)

  @doc """
  The wire type of a field (a parameter, a model field, a result) holding the
  declared type `type`. `presence` says whether an unset list or map must mean
  "the default" rather than "empty" (an optional one whose default is not
  empty): protobuf has no presence for repeated fields, so it takes a wrapper.
  """
  def wire_type(type, presence \\ false)

  def wire_type({:optional, inner}, _presence) when elem(inner, 0) in [:list, :map],
    do: {:wrap, wire_type(inner)}

  def wire_type({kind, _} = type, true) when kind in [:list, :map], do: {:wrap, wire_type(type)}
  def wire_type({:optional, inner}, _presence), do: wire_type(inner)
  def wire_type({:list, item}, _presence), do: {:list, element(item)}
  def wire_type({:map, item}, _presence), do: {:map, element(item)}
  def wire_type({:tuple, items}, _presence), do: {:tuple, Enum.map(items, &wire_type/1)}

  def wire_type({:union, members}, _presence) do
    {:union,
     for {field, type} <- members do
       wire = wire_type(type)
       {Atom.to_string(field), if(container?(type), do: {:wrap, wire}, else: wire)}
     end}
  end

  def wire_type(type, _presence), do: type

  # A list element or map value that is a container or optional is wrapped.
  defp element({:optional, _} = type), do: {:wrap, {:optional, wire_type(type)}}

  defp element(type),
    do: if(container?(type), do: {:wrap, wire_type(type)}, else: wire_type(type))

  defp container?(type), do: is_tuple(type) and elem(type, 0) in [:list, :map]

  ## Elixir -> wire

  @doc "The wire form of `value`, a value of the wire type `type`."
  def to_wire({:wrap, {:optional, type}}, value), do: %{"value" => to_wire(type, value)}
  def to_wire(_type, nil), do: nil
  def to_wire({:optional, type}, value), do: to_wire(type, value)
  def to_wire({:wrap, type}, value), do: %{"value" => to_wire(type, value)}

  # An improper list is passed on as it is, for the NIF to refuse with its
  # path (Enum would crash on it here).
  def to_wire({:list, type}, values) when is_list(values) do
    if List.improper?(values), do: values, else: Enum.map(values, &to_wire(type, &1))
  end

  def to_wire({:map, type}, values) when is_map(values) and not is_struct(values) do
    wire = Map.new(values, fn {key, value} -> {wire_key(key), to_wire(type, value)} end)

    if map_size(wire) < map_size(values) do
      {atom, _} =
        Enum.find(values, fn {key, _} -> is_atom(key) and is_map_key(values, wire_key(key)) end)

      refuse(
        "a map has both #{inspect(atom)} and #{inspect(wire_key(atom))} as keys, " <>
          "which are one key on the wire"
      )
    end

    wire
  end

  def to_wire({:tuple, types}, value)
      when is_tuple(value) and tuple_size(value) == length(types) do
    value
    |> Tuple.to_list()
    |> Enum.zip(types)
    |> Enum.with_index()
    |> Map.new(fn {{item, type}, index} -> {"item_#{index}", to_wire(type, item)} end)
  end

  def to_wire({:union, members}, value) do
    case member(members, value) do
      {field, type} -> %{field => to_wire(type, value)}
      nil -> value
    end
  end

  def to_wire({:custom, _scalar, nil}, value), do: value

  def to_wire({:custom, _scalar, {module, encode, _decode}}, value),
    do: convert(module, encode, value)

  def to_wire(:date, %Date{} = date), do: Date.to_iso8601(date)

  def to_wire(:datetime, %DateTime{} = datetime) do
    microseconds = DateTime.to_unix(datetime, :microsecond)

    %{
      "seconds" => Integer.floor_div(microseconds, 1_000_000),
      "nanos" => Integer.mod(microseconds, 1_000_000) * 1000
    }
  end

  def to_wire(:datetime, %NaiveDateTime{} = naive),
    do: to_wire(:datetime, DateTime.from_naive!(naive, "Etc/UTC"))

  def to_wire(type, value) when type in @scalars, do: value
  def to_wire(module, value) when is_atom(module), do: module.__bridge__(:to_wire, value)
  def to_wire(_type, value), do: value

  ## wire -> Elixir

  @doc "The Elixir value of `wire`, a wire value of the wire type `type`."
  def from_wire(_type, nil), do: nil
  def from_wire({:optional, type}, value), do: from_wire(type, value)
  def from_wire({:wrap, type}, %{"value" => value}), do: from_wire(type, value)

  def from_wire({:list, type}, values) when is_list(values),
    do: Enum.map(values, &from_wire(type, &1))

  def from_wire({:map, type}, values) when is_map(values),
    do: Map.new(values, fn {key, value} -> {key, from_wire(type, value)} end)

  def from_wire({:tuple, types}, %{} = wire) do
    types
    |> Enum.with_index()
    |> Enum.map(fn {type, index} -> from_wire(type, Map.get(wire, "item_#{index}")) end)
    |> List.to_tuple()
  end

  def from_wire({:union, members}, %{} = wire) do
    case Enum.find(members, fn {field, _type} -> Map.get(wire, field) != nil end) do
      {field, type} -> from_wire(type, Map.fetch!(wire, field))
      nil -> nil
    end
  end

  def from_wire({:custom, _scalar, nil}, value), do: value

  def from_wire({:custom, _scalar, {module, _encode, decode}}, value),
    do: convert(module, decode, value)

  def from_wire(:date, value) when is_binary(value), do: Date.from_iso8601!(value)

  def from_wire(:datetime, %{"seconds" => seconds, "nanos" => 0}),
    do: DateTime.from_unix!(seconds)

  def from_wire(:datetime, %{"seconds" => seconds, "nanos" => nanos}),
    do: DateTime.from_unix!(seconds * 1_000_000 + div(nanos, 1000), :microsecond)

  def from_wire(type, value) when type in @scalars, do: value
  def from_wire(module, value) when is_atom(module), do: module.__bridge__(:from_wire, value)
  def from_wire(_type, value), do: value

  ## Models and enums (called by their modules)

  @doc false
  def model_to_wire(module, fields, %{} = value) do
    for key <- Map.keys(value), key != :__struct__, not List.keymember?(fields, key, 0) do
      hint =
        if List.keymember?(fields, key, 1),
          do: " (its fields are given with atom keys)",
          else: ""

      refuse(
        "#{inspect(module)} has no field #{inspect(key)}#{hint}; its fields are " <>
          Enum.map_join(fields, ", ", &inspect(elem(&1, 0)))
      )
    end

    Map.new(fields, fn {key, name, type} -> {name, to_wire(type, Map.get(value, key))} end)
  end

  def model_to_wire(_module, _fields, value), do: value

  @doc false
  def model_from_wire(module, fields, %{} = wire) do
    struct!(
      module,
      Enum.map(fields, fn {key, name, type} -> {key, from_wire(type, wire[name])} end)
    )
  end

  @doc false
  def enum_to_wire(values, value) do
    case List.keyfind(values, value, 0) do
      {_value, name} -> name
      nil -> value
    end
  end

  @doc false
  def enum_from_wire(values, name) do
    case List.keyfind(values, name, 1) do
      {value, _name} -> value
      nil -> nil
    end
  end

  ## Unions: which member a value is

  # A value of the exact kind first (a float for a double), then a loose one
  # (an integer for a double, a plain map for a model).
  defp member(members, value) do
    Enum.find(members, fn {_, type} -> shape?(type, value, :exact) end) ||
      Enum.find(members, fn {_, type} -> shape?(type, value, :loose) end)
  end

  defp shape?(:int64, value, _mode), do: is_integer(value)
  defp shape?(:double, value, :exact), do: is_float(value)
  defp shape?(:double, value, :loose), do: is_number(value)
  defp shape?(:bool, value, _mode), do: is_boolean(value)
  defp shape?(:string, value, _mode), do: is_binary(value)
  defp shape?(:bytes, value, _mode), do: is_binary(value)
  defp shape?(:date, value, _mode), do: is_struct(value, Date)

  defp shape?(:datetime, value, _mode),
    do: is_struct(value, DateTime) or is_struct(value, NaiveDateTime)

  defp shape?({:tuple, types}, value, _mode),
    do: is_tuple(value) and tuple_size(value) == length(types)

  defp shape?({:wrap, {:list, _type}}, value, _mode), do: is_list(value)
  defp shape?({:wrap, {:map, _type}}, value, _mode), do: is_map(value) and not is_struct(value)

  defp shape?(module, value, mode) when is_atom(module) do
    case {module.__bridge__(:kind), mode} do
      {:enum, _} -> List.keymember?(module.__bridge__(:values), value, 0)
      {:model, :exact} -> is_struct(value, module)
      {:model, :loose} -> is_map(value) and not is_struct(value)
    end
  end

  defp shape?(_type, _value, _mode), do: false

  defp wire_key(key) when is_atom(key) and not is_nil(key), do: Atom.to_string(key)
  defp wire_key(key), do: key

  defp refuse(message), do: throw({__MODULE__, Error.new(:invalid_argument, message)})

  # A custom type's conversion is the user's function: what it raises ends
  # the call with an error naming it, instead of crashing the caller with a
  # stack trace inside Synapse.
  defp convert(module, function, value) do
    apply(module, function, [value])
  rescue
    exception ->
      throw(
        {__MODULE__,
         Error.new(
           :invalid_argument,
           "#{inspect(module)}.#{function}/1 raised #{inspect(exception.__struct__)}: " <>
             Exception.message(exception),
           %{value: value}
         )}
      )
  end
end
