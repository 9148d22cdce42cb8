defmodule SynapseCore.Proto do
  @moduledoc false
  # Facts the wire contract declares for every language, read from
  # `proto/synapse/v1/agent.proto` when this library compiles: enum values
  # and the comments above them (error kinds, limits). Python and Rust get
  # them from their generated stubs; Elixir has no protobuf compiler here,
  # so it reads the few it needs from the file itself.

  @path Path.expand("../../proto/synapse/v1/agent.proto", __DIR__)

  @doc "The contract's path (an `@external_resource` of the modules that read it)."
  @spec path() :: Path.t()
  def path, do: @path

  @doc """
  The values of enum `name`, in order: `{value_name, number, doc}`, where
  `doc` is the comment above the value, unwrapped. `UNSPECIFIED` values are
  left out.
  """
  @spec enum(String.t()) :: [{String.t(), integer(), String.t()}]
  def enum(name) do
    source = File.read!(@path)

    [_, body] =
      Regex.run(~r/^enum #{name} \{\n(.*?)^\}/ms, source) ||
        raise "agent.proto has no enum #{name}"

    body
    |> String.split("\n")
    |> Enum.reduce({[], []}, fn line, {values, comment} ->
      line = String.trim(line)

      cond do
        String.starts_with?(line, "//") ->
          {values, [String.trim_leading(line, "/") |> String.trim() | comment]}

        match = Regex.run(~r/^([A-Z0-9_]+) = (\d+);$/, line) ->
          [_, value, number] = match
          doc = comment |> Enum.reverse() |> Enum.join(" ")
          {[{value, String.to_integer(number), doc} | values], []}

        true ->
          {values, []}
      end
    end)
    |> elem(0)
    |> Enum.reverse()
    |> Enum.reject(fn {value, _, _} -> String.ends_with?(value, "_UNSPECIFIED") end)
  end

  @doc "The number of value `value` of enum `name`."
  @spec enum_value(String.t(), String.t()) :: integer()
  def enum_value(name, value) do
    Enum.find_value(enum(name), fn
      {^value, number, _} -> number
      _ -> nil
    end) ||
      raise "agent.proto's enum #{name} has no value #{value}"
  end
end
