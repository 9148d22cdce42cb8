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
  tool's parameters, then calls the function in a process of its own,
  linked to the run's tool runner (the run's end, however it comes, ends
  it; the caller chain in `:"$callers"` reaches it, as a `Task`'s does),
  with the arguments and a `SynapseCore.Tool.Context`. Parallel calls of one model
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
  `{:error, %SynapseCore.Error{kind: :tool_failed}}`. A tool whose call is
  done and failed for good (a missing record, an unsupported request)
  returns `{:failed, reason}` instead, pydantic-ai's `ToolFailed`: the model
  sees the failure as the call's result, with no instruction to retry, and
  none of the tool's retries is used. A call still running when the run
  ends (its deadline passed, it was cancelled) is stopped.
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
          max_retries: non_neg_integer() | nil,
          requires_approval: boolean()
        }

  @enforce_keys [:name, :parameters, :function]
  defstruct [
    :name,
    :parameters,
    :fields,
    :function,
    description: "",
    timeout: 30_000,
    max_retries: nil,
    requires_approval: false
  ]

  @schema [
    name: [
      type: {:custom, &__MODULE__.cast_name/1, "1 to 64 letters, digits, _ or - (or an atom)"},
      required: true,
      doc: "the name the model calls it by: letters, digits, `_` and `-`, as model APIs require."
    ],
    description: [
      type: :string,
      default: "",
      doc: "what the tool does and when to use it; the model reads it."
    ],
    parameters: [
      type:
        {:custom, &__MODULE__.cast_parameters/1,
         ~s(fields, or a JSON Schema map of "type" "object")},
      default: [],
      doc_type: ~s(fields, or a JSON Schema map of "type" "object"),
      doc: """
      a keyword list of fields in Synapse's type language (see
      `SynapseCore.Schema`), or a JSON Schema map of type `"object"`.
      """
    ],
    function: [
      type: {:custom, &__MODULE__.cast_function/1, "a function of arity 1 or 2"},
      required: true,
      doc: """
      a function of arity 1 (the arguments) or 2 (the arguments and a
      `SynapseCore.Tool.Context`).
      """
    ],
    timeout: [
      type: {:integer, 1, SynapseCore.Options.max_ms()},
      default: 30_000,
      doc: "milliseconds one call may take."
    ],
    max_retries: [
      type: {:integer, 0, SynapseCore.Options.max_int32()},
      default: nil,
      doc: """
      how many times the model may retry this tool after a failure.
      Defaults to the agent's own setting.
      """
    ],
    requires_approval: [
      type: :boolean,
      default: false,
      doc: """
      pydantic-ai's `requires_approval`: a call waits for a person's
      decision before it runs. A run given an `:approver` asks it during
      the run; otherwise the run ends with the call in its output, a
      `SynapseCore.DeferredToolRequests` (see "Human in the loop" in
      `SynapseCore.Agent`).
      """
    ]
  ]

  @doc """
  Builds a tool. Raises `ArgumentError` for invalid options.

  ## Options

  #{SynapseCore.Options.docs(@schema)}

      iex> tool = SynapseCore.Tool.new(name: "add", parameters: [a: :integer, b: :integer],
      ...>   function: fn %{a: a, b: b} -> a + b end)
      iex> tool.parameters["required"]
      ["a", "b"]
  """
  @spec new(keyword()) :: t()
  def new(opts) do
    options = SynapseCore.Options.validate!(opts, @schema, "a tool")
    {parameters, fields} = options.parameters

    %__MODULE__{
      name: options.name,
      description: options.description,
      parameters: parameters,
      fields: fields,
      function: options.function,
      timeout: options.timeout,
      max_retries: options.max_retries,
      requires_approval: options.requires_approval
    }
  end

  @doc false
  @spec option_keys() :: [atom()]
  def option_keys, do: Keyword.keys(@schema)

  @doc """
  The tools in `list`: `SynapseCore.Tool` structs and modules that
  `use SynapseCore.Tools`. Raises `ArgumentError` for anything else and for
  two tools with one name.
  """
  @spec expand([t() | module()]) :: [t()]
  def expand(list) when is_list(list) do
    if List.improper?(list),
      do: raise(ArgumentError, "expected a list of tools, got an improper list")

    tools = Enum.flat_map(list, &expand_one/1)

    case tools |> Enum.frequencies_by(& &1.name) |> Enum.filter(fn {_, n} -> n > 1 end) do
      [] -> tools
      [{name, _} | _] -> raise ArgumentError, "two tools are named #{inspect(name)}"
    end
  end

  def expand(other), do: raise(ArgumentError, ":tools must be a list, got: #{inspect(other)}")

  # A struct built by hand gets the checks of new/1 (its parameters' aside).
  defp expand_one(%__MODULE__{} = tool) do
    fields = [:name, :description, :function, :timeout, :max_retries, :requires_approval]

    tool
    |> Map.take(fields)
    |> Enum.reject(fn {_key, value} -> is_nil(value) end)
    |> SynapseCore.Options.validate!(Keyword.take(@schema, fields), "a tool")

    [tool]
  end

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
  # What the worker is told about the tool, its parameters as JSON: made
  # once for an agent's tools, when the agent starts (a run sends them as
  # they are), and with each run for a run's own. Raises ArgumentError for
  # parameters with no JSON form (only a struct built by hand can have them).
  @spec definition(t()) :: map()
  def definition(%__MODULE__{} = tool) do
    case SynapseCore.JSON.encode(tool.parameters) do
      {:ok, json} ->
        %{
          name: tool.name,
          description: tool.description,
          parameters_json: json,
          max_retries: tool.max_retries,
          requires_approval: tool.requires_approval
        }

      {:error, error} ->
        raise ArgumentError,
              "the parameters of tool #{inspect(tool.name)} have no JSON form: #{error.message}"
    end
  end

  @doc false
  def cast_name(name) when is_atom(name) and not is_nil(name) and not is_boolean(name),
    do: cast_name(Atom.to_string(name))

  def cast_name(name) when is_binary(name) do
    if String.match?(name, ~r/^[A-Za-z0-9_-]{1,64}$/),
      do: {:ok, name},
      else: {:error, "a tool name must be 1 to 64 letters, digits, _ or -"}
  end

  def cast_name(_other), do: {:error, "a tool name must be 1 to 64 letters, digits, _ or -"}

  @doc false
  def cast_parameters(fields) when is_list(fields) do
    with {:ok, schema} <- json_schema(Schema.to_json_schema(fields)), do: {:ok, {schema, fields}}
  rescue
    error in ArgumentError -> {:error, Exception.message(error)}
  end

  def cast_parameters(%{"type" => "object"} = schema) do
    with {:ok, schema} <- json_schema(schema), do: {:ok, {schema, nil}}
  end

  def cast_parameters(_other),
    do: {:error, ~s(expected fields, or a JSON Schema map of "type" "object")}

  # The schema goes to Python as JSON (definition/1): what has no JSON form
  # is refused when the tool is made.
  defp json_schema(schema) do
    case SynapseCore.Options.json_form(schema) do
      :ok -> {:ok, schema}
      {:error, why} -> {:error, "the JSON Schema has no JSON form (#{why})"}
    end
  end

  @doc false
  def cast_function(fun) when is_function(fun, 1) or is_function(fun, 2), do: {:ok, fun}
  def cast_function(_other), do: {:error, "expected a function of arity 1 or 2"}
end
