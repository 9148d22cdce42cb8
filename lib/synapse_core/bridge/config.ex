defmodule SynapseCore.Bridge.Config do
  @moduledoc false
  # What mix synapse.gen.bridge reads of a bridge's configuration file (see
  # its doc for the whole file): the Python module it names and the `elixir`
  # section, checked here with errors naming the file and the key. The rest
  # of the file is the Python generator's, which checks it.

  @elixir_keys ~w(module functions types)
  @type_keys ~w(module encode decode spec)

  @doc """
  The config file at `path`: `{:ok, %{module: python_module | nil, elixir:
  generator_options}}`, or a message naming the key that is wrong.
  """
  @spec read(Path.t()) ::
          {:ok, %{module: String.t() | nil, elixir: keyword()}} | {:error, String.t()}
  def read(path) do
    with {:ok, data} <- read_json(path, "the bridge config") do
      parse(data, path)
    end
  end

  @doc "The decoded JSON file at `path`, or a message naming it as `what`."
  @spec read_json(Path.t(), String.t()) :: {:ok, term()} | {:error, String.t()}
  def read_json(path, what) do
    with {:ok, text} <- File.read(path),
         {:ok, data} <- SynapseCore.JSON.decode(text) do
      {:ok, data}
    else
      {:error, %SynapseCore.Error{message: message}} ->
        {:error, "#{what} #{path} is not valid JSON: #{message}"}

      {:error, reason} ->
        {:error, "cannot read #{what} #{path}: #{:file.format_error(reason)}"}
    end
  end

  @doc "Checks a decoded configuration (see `read/1`)."
  @spec parse(term(), Path.t()) ::
          {:ok, %{module: String.t() | nil, elixir: keyword()}} | {:error, String.t()}
  def parse(data, path) do
    with :ok <- object(data, "the file", path),
         {:ok, module} <-
           optional_string(data["module"], "module", "the name of a Python module", path),
         {:ok, elixir} <- elixir(Map.get(data, "elixir", %{}), path) do
      {:ok, %{module: module, elixir: elixir}}
    end
  end

  defp elixir(section, path) do
    with :ok <- object(section, "elixir", path),
         :ok <- known_keys(section, @elixir_keys, "elixir", path),
         {:ok, module} <-
           optional_string(section["module"], "elixir.module", "an Elixir module name", path),
         :ok <- module_name(module, "elixir.module", path),
         {:ok, functions} <- functions(Map.get(section, "functions", %{}), path),
         {:ok, types} <- types(Map.get(section, "types", %{}), path) do
      {:ok, [elixir_module: module, functions: functions, types: types]}
    end
  end

  defp functions(functions, path) do
    with :ok <- object(functions, "elixir.functions", path) do
      Enum.reduce_while(Enum.sort(functions), {:ok, %{}}, fn {python, elixir}, {:ok, acc} ->
        if is_binary(elixir),
          do: {:cont, {:ok, Map.put(acc, python, elixir)}},
          else:
            {:halt,
             error(
               path,
               "elixir.functions[#{inspect(python)}]",
               "expected the Elixir function's name (a string), got #{kind(elixir)}"
             )}
      end)
    end
  end

  defp types(types, path) do
    with :ok <- object(types, "elixir.types", path) do
      Enum.reduce_while(Enum.sort(types), {:ok, %{}}, fn {python, conversion}, {:ok, acc} ->
        case conversion(conversion, "elixir.types[#{inspect(python)}]", path) do
          {:ok, conversion} -> {:cont, {:ok, Map.put(acc, python_type(python), conversion)}}
          error -> {:halt, error}
        end
      end)
    end
  end

  defp conversion(conversion, key, path) do
    with :ok <- object(conversion, key, path),
         :ok <- known_keys(conversion, @type_keys, key, path),
         {:ok, module} <-
           required_string(
             conversion,
             "module",
             key,
             "the Elixir module holding the conversion",
             path
           ),
         :ok <- module_name(module, "#{key}.module", path),
         {:ok, encode} <- function_name(conversion, "encode", key, path),
         {:ok, decode} <- function_name(conversion, "decode", key, path),
         {:ok, spec} <- optional_string(conversion["spec"], "#{key}.spec", "a typespec", path),
         :ok <- spec(spec, "#{key}.spec", path) do
      {:ok, %{module: module, encode: encode, decode: decode, spec: spec}}
    end
  end

  # The IR names a Python type `module:qualname`; the config may write it
  # `module.Class` (the Python side reads it the same way).
  defp python_type(name) do
    if String.contains?(name, ":") do
      name
    else
      case String.split(name, ".") do
        [_] -> name
        parts -> Enum.join(Enum.drop(parts, -1), ".") <> ":" <> List.last(parts)
      end
    end
  end

  defp function_name(conversion, name, key, path) do
    with {:ok, function} <-
           required_string(conversion, name, key, "the name of a function of one argument", path) do
      if String.match?(function, ~r/^[a-z_][a-zA-Z0-9_]*[?!]?$/),
        do: {:ok, function},
        else: error(path, "#{key}.#{name}", "#{inspect(function)} is not an Elixir function name")
    end
  end

  defp spec(nil, _key, _path), do: :ok

  defp spec(spec, key, path) do
    case Code.string_to_quoted(spec) do
      {:ok, _} -> :ok
      {:error, _} -> error(path, key, "#{inspect(spec)} is not an Elixir typespec")
    end
  end

  defp module_name(nil, _key, _path), do: :ok

  defp module_name(module, key, path) do
    if String.match?(module, ~r/^[A-Z][A-Za-z0-9_]*(\.[A-Z][A-Za-z0-9_]*)*$/),
      do: :ok,
      else: error(path, key, "#{inspect(module)} is not an Elixir module name")
  end

  defp required_string(map, name, key, what, path) do
    case map do
      %{^name => value} when is_binary(value) ->
        {:ok, value}

      %{^name => value} ->
        error(path, "#{key}.#{name}", "expected #{what} (a string), got #{kind(value)}")

      %{} ->
        error(path, "#{key}.#{name}", "missing: #{what}")
    end
  end

  defp optional_string(nil, _key, _what, _path), do: {:ok, nil}
  defp optional_string(value, _key, _what, _path) when is_binary(value), do: {:ok, value}

  defp optional_string(value, key, what, path),
    do: error(path, key, "expected #{what} (a string), got #{kind(value)}")

  defp object(value, _key, _path) when is_map(value), do: :ok
  defp object(value, key, path), do: error(path, key, "expected an object, got #{kind(value)}")

  defp known_keys(map, known, key, path) do
    case Enum.sort(Map.keys(map) -- known) do
      [] ->
        :ok

      [unknown | _] ->
        error(path, "#{key}.#{unknown}", "unknown key (the keys are #{Enum.join(known, ", ")})")
    end
  end

  defp error(path, key, problem), do: {:error, "bridge config #{path}: #{key}: #{problem}"}

  defp kind(nil), do: "null"
  defp kind(value) when is_boolean(value), do: "a boolean"
  defp kind(value) when is_number(value), do: "a number"
  defp kind(value) when is_binary(value), do: "the string #{inspect(value)}"
  defp kind(value) when is_list(value), do: "a list"
  defp kind(value) when is_map(value), do: "an object"
end
