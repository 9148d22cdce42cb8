defmodule SynapseCore.Options do
  @moduledoc false
  # Option sets declared once: each option's type (ranges included), default
  # and doc live in one keyword list, a *schema*. `validate!/3` checks a
  # caller's options against it and fills in the defaults; `docs/1` renders
  # the "## Options" list of a function's @doc from the same schema, so the
  # two cannot drift apart. (NimbleOptions does this for Broadway and Finch;
  # hex is out of reach here, and this needs a small part of it.)
  #
  # A schema entry is `{key, spec}` where spec has:
  #
  #   * `:type` (required) - see `t:type/0`;
  #   * `:default` - filled in when the option is absent (a `nil` default
  #     means "no value"); options with no `:default` and not `:required`
  #     are absent from the result;
  #   * `:required` - the option must be given;
  #   * `:doc` - Markdown for the docs; `false` hides the option;
  #   * `:secret` - the value is never shown in an error message.
  #
  # Errors raise `ArgumentError` with a message naming the option and what it
  # must be; the value is shown (with `inspect/2` limits) unless secret.

  @typedoc "What an option's value must be."
  @type type ::
          :any
          | :atom
          | :boolean
          | :pid
          | :string
          | :non_empty_string
          | :os_string
          | :map
          | :keyword_or_map
          | {:integer, integer(), integer() | :infinity}
          | {:timeout, pos_integer()}
          | {:fun, arity()}
          | {:in, [term()]}
          | {:list, type()}
          | {:or, [type()]}
          | {:json, type()}
          | {:keyword, schema()}
          | {:custom, (term() -> {:ok, term()} | {:error, String.t()}), String.t()}

  @type schema :: keyword(keyword())

  @doc """
  The largest timeout, interval or delay any option takes, in milliseconds:
  2³¹ − 1 (about 24.8 days), the largest value every timer of the BEAM and of
  the NIF takes, with room for the margins added to it.
  """
  @spec max_ms() :: pos_integer()
  def max_ms, do: 2_147_483_647

  @doc "The largest signed 32-bit integer: the wire's limit for counts."
  @spec max_int32() :: pos_integer()
  def max_int32, do: 2_147_483_647

  @doc """
  `value` if it is a timeout the BEAM's timers take (milliseconds from 0 to
  `max_ms/0`, or `:infinity`), else raises `ArgumentError` naming `what`: for
  waits that take their timeout as an argument (`SynapseCore.Agent.await/2`).
  """
  @spec timeout!(term(), String.t()) :: timeout()
  def timeout!(value, what) do
    case cast({:timeout, 0}, value) do
      {:ok, timeout} ->
        timeout

      {:error, reason} ->
        raise ArgumentError, "invalid timeout for #{what}: #{reason}, got: #{show(value)}"
    end
  end

  @doc """
  Validates `opts` (a keyword list) against `schema`; returns a map of every
  option given or defaulted, each cast (a default too). `what` names the
  option set in errors.
  """
  @spec validate!(term(), schema(), String.t()) :: map()
  def validate!(opts, schema, what) do
    unless Keyword.keyword?(opts) do
      # Only its shape: the values may hold a secret.
      raise ArgumentError, "expected #{what} as a keyword list, got: #{shape(opts)}"
    end

    case Keyword.keys(opts) -- Enum.uniq(Keyword.keys(opts)) do
      [] -> :ok
      [key | _] -> raise ArgumentError, "the #{inspect(key)} option is given more than once"
    end

    check_known!(opts, schema, what)

    Enum.reduce(schema, %{}, fn {key, spec}, acc ->
      case Keyword.fetch(opts, key) do
        {:ok, value} ->
          Map.put(acc, key, value!(key, value, spec))

        :error ->
          cond do
            Keyword.has_key?(spec, :default) -> Map.put(acc, key, default!(key, spec))
            spec[:required] -> raise ArgumentError, "the #{inspect(key)} option is required"
            true -> acc
          end
      end
    end)
  end

  # A declared default is cast as a given value is (`nil` stands for unset):
  # the code that takes the option sees one form either way.
  defp default!(key, spec) do
    case spec[:default] do
      nil -> nil
      default -> value!(key, default, spec)
    end
  end

  defp shape(map) when is_map(map), do: "a map with the keys #{inspect(Map.keys(map), limit: 20)}"

  defp shape(list) when is_list(list),
    do: "a list that is not a keyword list (its values not shown)"

  defp shape(value) when is_atom(value) or is_number(value), do: inspect(value)
  defp shape(_other), do: "a term that is not a list (not shown)"

  defp check_known!(opts, schema, what) do
    case Keyword.keys(opts) -- Keyword.keys(schema) do
      [] ->
        :ok

      unknown ->
        # Only the names: the values may hold a secret.
        known = schema |> Keyword.keys() |> Enum.map_join(", ", &inspect/1)

        raise ArgumentError,
              "unknown option#{if match?([_, _ | _], unknown), do: "s"} " <>
                "#{unknown |> Enum.uniq() |> Enum.map_join(", ", &inspect/1)} for #{what}; " <>
                "the known options are: #{known}"
    end
  end

  defp value!(key, value, spec) do
    case cast(spec[:type], value) do
      {:ok, value} ->
        value

      {:error, reason} ->
        raise ArgumentError, "invalid #{inspect(key)} option: #{reason}#{got(value, spec)}"
    end
  end

  # A nested keyword list's own error names the option in it that is
  # wrong, and shows it unless secret: the whole list would show the
  # secret options next to it too.
  defp got(value, spec) do
    cond do
      spec[:secret] -> ", got: a value that is not shown (secret)"
      match?({:keyword, _}, spec[:type]) and is_list(value) -> ""
      true -> ", got: #{show(value)}"
    end
  end

  defp show(value), do: inspect(value, limit: 10, printable_limit: 200)

  @doc """
  Casts `value` to `type`: `{:ok, value}` (possibly normalised: a keyword
  list given for a map, a nested keyword list as a map, a custom type's
  conversion) or `{:error, "expected ..."}`.
  """
  @spec cast(type(), term()) :: {:ok, term()} | {:error, String.t()}
  def cast({:custom, fun, _description}, value), do: fun.(value)

  def cast({:keyword, schema}, value) when is_list(value) do
    {:ok, validate!(value, schema, "the keyword list")}
  rescue
    error in ArgumentError -> {:error, Exception.message(error)}
  end

  def cast({:list, type} = list, value) when is_list(value) do
    if List.improper?(value),
      do: {:error, "expected #{describe(list)}"},
      else: cast_items(type, value)
  end

  def cast(:keyword_or_map, value) when is_list(value) do
    if Keyword.keyword?(value),
      do: {:ok, Map.new(value)},
      else: {:error, "expected #{describe(:keyword_or_map)}"}
  end

  # Data sent to Python as JSON: what the encoder refuses (a pid, a tuple,
  # bytes that are not UTF-8, ...) is refused here, naming the option,
  # rather than where it is sent.
  def cast({:json, type} = json, value) do
    with {:ok, value} <- cast(type, value) do
      case json_form(value) do
        :ok -> {:ok, value}
        {:error, reason} -> {:error, "expected #{describe(json)} (#{reason})"}
      end
    end
  end

  def cast({:or, types} = type, value) do
    Enum.find_value(types, {:error, "expected #{describe(type)}"}, fn member ->
      with {:error, _} <- cast(member, value), do: nil
    end)
  end

  def cast(type, value) do
    if valid?(type, value), do: {:ok, value}, else: {:error, "expected #{describe(type)}"}
  end

  @doc """
  `:ok` when `value` has a JSON form (`SynapseCore.JSON`, the encoder that
  sends it), else `{:error, why}`: for casts of data sent to Python as JSON.
  """
  @spec json_form(term()) :: :ok | {:error, String.t()}
  def json_form(value) do
    case SynapseCore.JSON.encode(value) do
      {:ok, _json} -> :ok
      {:error, error} -> {:error, error.message}
    end
  end

  defp cast_items(type, value) do
    value
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {item, index}, {:ok, acc} ->
      case cast(type, item) do
        {:ok, item} -> {:cont, {:ok, [item | acc]}}
        {:error, reason} -> {:halt, {:error, "element #{index}: #{reason}"}}
      end
    end)
    |> case do
      {:ok, items} -> {:ok, Enum.reverse(items)}
      error -> error
    end
  end

  defp valid?(:any, _value), do: true
  defp valid?(:atom, value), do: is_atom(value)
  defp valid?(:boolean, value), do: is_boolean(value)
  defp valid?(:pid, value), do: is_pid(value)
  defp valid?(:string, value), do: is_binary(value) and String.valid?(value)
  defp valid?(:non_empty_string, value), do: valid?(:string, value) and value != ""

  defp valid?(:os_string, value),
    do: valid?(:non_empty_string, value) and not String.contains?(value, <<0>>)

  defp valid?(:map, value), do: is_map(value) and not is_struct(value)
  defp valid?(:keyword_or_map, value), do: valid?(:map, value)

  defp valid?({:integer, min, max}, value),
    do: is_integer(value) and value >= min and (max == :infinity or value <= max)

  defp valid?({:timeout, min}, value),
    do: value == :infinity or valid?({:integer, min, max_ms()}, value)

  defp valid?({:fun, arity}, value), do: is_function(value, arity)
  defp valid?({:in, values}, value), do: value in values
  defp valid?(_type, _value), do: false

  @doc "A type in words, for errors and docs."
  @spec describe(type()) :: String.t()
  def describe(:any), do: "any term"
  def describe(:atom), do: "an atom"
  def describe(:boolean), do: "a boolean"
  def describe(:pid), do: "a pid"
  def describe(:string), do: "a UTF-8 string"
  def describe(:non_empty_string), do: "a non-empty UTF-8 string"
  def describe(:os_string), do: "a non-empty UTF-8 string without NUL bytes"
  def describe(:map), do: "a map"
  def describe(:keyword_or_map), do: "a map or a keyword list"
  def describe({:integer, min, :infinity}), do: "an integer of at least #{min}"
  def describe({:integer, min, max}), do: "an integer from #{format(min)} to #{format(max)}"

  def describe({:timeout, min}),
    do: "#{describe({:integer, min, max_ms()})} (milliseconds), or :infinity"

  def describe({:fun, arity}), do: "a function of arity #{arity}"
  def describe({:in, values}), do: "one of " <> Enum.map_join(values, ", ", &inspect/1)
  def describe({:list, type}), do: "a list of " <> plural(describe(type))
  def describe({:or, types}), do: Enum.map_join(types, ", or ", &describe/1)
  def describe({:json, type}), do: describe(type) <> " of JSON data"

  def describe({:keyword, schema}),
    do: "a keyword list of " <> Enum.map_join(Keyword.keys(schema), ", ", &inspect/1)

  def describe({:custom, _fun, description}), do: description

  defp plural("an " <> rest), do: rest <> "s"
  defp plural("a " <> rest), do: rest <> "s"
  defp plural(other), do: other

  defp format(integer) when integer >= 10_000 do
    integer
    |> Integer.to_string()
    |> String.reverse()
    |> String.replace(~r/(\d{3})(?=\d)/, "\\1_")
    |> String.reverse()
  end

  defp format(integer), do: Integer.to_string(integer)

  @doc """
  The Markdown list of a schema's documented options, for a `@doc`: name,
  whether it is required, its doc, what it takes and its default.
  """
  @spec docs(schema()) :: String.t()
  def docs(schema) do
    schema
    |> Enum.reject(fn {_key, spec} -> spec[:doc] == false end)
    |> Enum.map_join("\n", fn {key, spec} -> doc_entry(key, spec) end)
  end

  defp doc_entry(key, spec) do
    required = if spec[:required], do: " (required)", else: ""
    takes = spec[:doc_type] || describe(spec[:type])

    default =
      case Keyword.fetch(spec, :default) do
        {:ok, nil} -> ""
        {:ok, default} -> " Defaults to `#{spec[:doc_default] || show_default(default)}`."
        :error -> ""
      end

    text = "#{String.trim(spec[:doc] || "")} Takes #{takes}.#{default}"
    "  * `#{inspect(key)}`#{required} - " <> indent(text)
  end

  defp show_default(integer) when is_integer(integer), do: format(integer)
  defp show_default(other), do: inspect(other)

  defp indent(text), do: String.replace(text, "\n", "\n    ")
end
