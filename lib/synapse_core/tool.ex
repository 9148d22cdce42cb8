defmodule SynapseCore.Tool do
  @moduledoc """
  A tool written in Elixir that the model can call during a run.

  Define tools as functions of a module with `use SynapseCore.Tools`, or
  one at a time with `new/1`:

      SynapseCore.Tool.new(
        name: "order_status",
        description: "The shipping status of an order.",
        parameters: [order_id: [type: :integer, description: "The order number"]],
        function: fn %{order_id: id}, _context -> {:ok, MyApp.Orders.status(id)} end
      )

  Give tools to an agent (`tools:` of `SynapseCore.Agent.start_link/1`, for
  every run) or to one run (`tools:` of `SynapseCore.Agent.run_sync/3` and
  friends); they are added to the tools the Python agent defines itself.

  ## Calls

  When the model calls a tool, Synapse validates the arguments against the
  tool's parameters, then calls the function in a supervised `Task`, with
  the arguments and a `SynapseCore.Tool.Context`. Parallel calls of one model
  response run in parallel. Arguments declared with Synapse's type language
  (see `SynapseCore.Schema`) arrive as a map with the declared atom keys;
  arguments of a tool whose parameters are a JSON Schema map arrive with
  string keys.

  The function returns `{:ok, value}` or a plain `value`, which goes back to
  the model as JSON, or `{:error, reason}`. Invalid arguments, an
  `{:error, reason}`, an exception, a value with no JSON form and a call
  that outlives the tool's `:timeout` all go back to the model as a retry
  prompt saying what went wrong, as pydantic-ai's `ModelRetry` does; once
  the tool's retries are used up, the run fails with
  `{:error, %SynapseCore.Error{kind: :tool_failed}}`. A call still running
  when the run ends (its deadline passed, it was cancelled) is stopped.
  """

  alias SynapseCore.Schema

  @typedoc "A tool's function: gets the arguments and the call's context."
  @type function_spec ::
          (map() -> term()) | (map(), SynapseCore.Tool.Context.t() -> term())

  @type t :: %__MODULE__{
          name: String.t(),
          description: String.t(),
          parameters: Schema.json_schema(),
          fields: Schema.fields() | nil,
          function: function_spec(),
          timeout: pos_integer(),
          max_retries: non_neg_integer() | nil
        }

  @enforce_keys [:name, :parameters, :function]
  defstruct [
    :name,
    :parameters,
    :fields,
    :function,
    description: "",
    timeout: 30_000,
    max_retries: nil
  ]

  @doc """
  Builds a tool. Raises `ArgumentError` for invalid options.

  ## Options

    * `:name` (required) - the name the model calls it by: letters, digits,
      `_` and `-`, as model APIs require.
    * `:description` - what the tool does and when to use it; the model reads
      it. Defaults to `""`.
    * `:parameters` - a keyword list of fields in Synapse's type language
      (see `SynapseCore.Schema`), or a JSON Schema map of type `"object"`.
      Defaults to no parameters.
    * `:function` (required) - a function of arity 1 (the arguments) or 2
      (the arguments and a `SynapseCore.Tool.Context`).
    * `:timeout` - milliseconds one call may take. Defaults to `30_000`.
    * `:max_retries` - how many times the model may retry this tool after a
      failure. Defaults to the agent's own setting.

      iex> tool = SynapseCore.Tool.new(name: "add", parameters: [a: :integer, b: :integer],
      ...>   function: fn %{a: a, b: b} -> a + b end)
      iex> tool.parameters["required"]
      ["a", "b"]
  """
  @spec new(keyword()) :: t()
  def new(opts) when is_list(opts) do
    opts =
      Keyword.validate!(opts, [
        :name,
        :function,
        description: "",
        parameters: [],
        timeout: 30_000,
        max_retries: nil
      ])

    name = name!(opts[:name])
    {parameters, fields} = parameters!(name, opts[:parameters])

    %__MODULE__{
      name: name,
      description: string!(opts[:description], :description),
      parameters: parameters,
      fields: fields,
      function: function!(opts[:function]),
      timeout: timeout!(opts[:timeout]),
      max_retries: max_retries!(opts[:max_retries])
    }
  end

  @doc """
  The tools in `list`: `SynapseCore.Tool` structs and modules that
  `use SynapseCore.Tools`. Raises `ArgumentError` for anything else and for
  two tools with one name.
  """
  @spec expand([t() | module()]) :: [t()]
  def expand(list) when is_list(list) do
    tools = Enum.flat_map(list, &expand_one/1)

    case tools |> Enum.frequencies_by(& &1.name) |> Enum.filter(fn {_, n} -> n > 1 end) do
      [] -> tools
      [{name, _} | _] -> raise ArgumentError, "two tools are named #{inspect(name)}"
    end
  end

  def expand(other), do: raise(ArgumentError, ":tools must be a list, got: #{inspect(other)}")

  defp expand_one(%__MODULE__{} = tool), do: [tool]

  defp expand_one(module) when is_atom(module) do
    Code.ensure_loaded(module)

    if function_exported?(module, :__synapse_tools__, 0) do
      module.__synapse_tools__()
    else
      raise ArgumentError, "#{inspect(module)} is not a module of tools (use SynapseCore.Tools)"
    end
  end

  defp expand_one(other),
    do:
      raise(
        ArgumentError,
        "expected a SynapseCore.Tool or a module of tools, got: #{inspect(other)}"
      )

  @doc false
  # What the worker is told about the tool.
  @spec definition(t()) :: map()
  def definition(%__MODULE__{} = tool) do
    %{
      name: tool.name,
      description: tool.description,
      parameters: tool.parameters,
      max_retries: tool.max_retries
    }
  end

  defp name!(name) when is_atom(name) and not is_nil(name), do: name!(Atom.to_string(name))

  defp name!(name) when is_binary(name) do
    if String.match?(name, ~r/^[A-Za-z0-9_-]{1,64}$/) do
      name
    else
      raise ArgumentError,
            "a tool name must be 1 to 64 letters, digits, _ or -, got: #{inspect(name)}"
    end
  end

  defp name!(other), do: raise(ArgumentError, "a tool needs a :name, got: #{inspect(other)}")

  defp parameters!(_name, fields) when is_list(fields) do
    {Schema.to_json_schema(fields), fields}
  end

  defp parameters!(name, %{} = schema) do
    unless schema["type"] == "object" do
      raise ArgumentError,
            "the parameters of tool #{name} must be a JSON Schema of \"type\" \"object\", got: #{inspect(schema)}"
    end

    {schema, nil}
  end

  defp parameters!(name, other),
    do:
      raise(
        ArgumentError,
        "the parameters of tool #{name} must be fields or a JSON Schema map, got: #{inspect(other)}"
      )

  defp string!(value, _key) when is_binary(value), do: value

  defp string!(value, key),
    do: raise(ArgumentError, "#{inspect(key)} must be a string, got: #{inspect(value)}")

  defp function!(fun) when is_function(fun, 1) or is_function(fun, 2), do: fun

  defp function!(other),
    do: raise(ArgumentError, "a tool's :function must have arity 1 or 2, got: #{inspect(other)}")

  defp timeout!(ms) when is_integer(ms) and ms > 0, do: ms

  defp timeout!(other),
    do: raise(ArgumentError, ":timeout must be a positive integer, got: #{inspect(other)}")

  defp max_retries!(nil), do: nil
  defp max_retries!(n) when is_integer(n) and n >= 0, do: n

  defp max_retries!(other),
    do:
      raise(ArgumentError, ":max_retries must be a non-negative integer, got: #{inspect(other)}")
end
