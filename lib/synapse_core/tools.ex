defmodule SynapseCore.Tools do
  @moduledoc """
  Defines tools as the functions of a module.

      defmodule MyApp.Tools do
        use SynapseCore.Tools

        @doc "The shipping status of an order."
        @tool order_id: [type: :integer, description: "The order number"]
        def order_status(%{order_id: id}, _context), do: {:ok, MyApp.Orders.status(id)}

        @doc "Looks up customers by name."
        @tool params: [name: :string, limit: [type: :integer, required: false, default: 10]],
              timeout: 5_000
        def find_customers(%{name: name, limit: limit}), do: MyApp.Customers.search(name, limit)
      end

      {SynapseCore.Agent, name: :support, agent: "...", tools: [MyApp.Tools]}

  `@tool` marks the next public function, of arity 1 (the arguments) or 2
  (the arguments and a `SynapseCore.Tool.Context`), as a tool named after
  it. Its value is the parameters (fields in the type language of
  `SynapseCore.Schema`, `[]` for none), or a keyword list with `:params` and
  any of the other options of `SynapseCore.Tool.new/1` (`:name`,
  `:description`, `:timeout`, `:max_retries`). The function's `@doc` is the
  tool's description, which the model reads: say what the tool does and
  when to use it.

  The tools are checked when the module compiles: a bad type or option is a
  compile error.
  """

  @options [:params | SynapseCore.Tool.option_keys() -- [:function, :parameters]]

  @doc false
  defmacro __using__(_opts) do
    quote do
      Module.register_attribute(__MODULE__, :tool, [])
      Module.register_attribute(__MODULE__, :synapse_tools, accumulate: true)
      @on_definition SynapseCore.Tools
      @before_compile SynapseCore.Tools
    end
  end

  @doc false
  def __on_definition__(env, kind, name, args, _guards, _body) do
    case Module.get_attribute(env.module, :tool) do
      nil ->
        :ok

      spec ->
        Module.delete_attribute(env.module, :tool)
        arity = length(args)

        unless kind == :def and arity in [1, 2] do
          raise CompileError,
            file: env.file,
            line: env.line,
            description:
              "@tool must be followed by a public function of arity 1 or 2, got #{kind} #{name}/#{arity}"
        end

        description =
          case Module.get_attribute(env.module, :doc) do
            {_line, doc} when is_binary(doc) -> String.trim(doc)
            _ -> ""
          end

        Module.put_attribute(
          env.module,
          :synapse_tools,
          {name, arity, spec, description, env.line}
        )
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    tools =
      env.module
      |> Module.get_attribute(:synapse_tools)
      |> Enum.reverse()
      |> Enum.map(&build(env, &1))

    quote do
      @doc false
      def __synapse_tools__, do: unquote(Macro.escape(tools))
    end
  end

  defp build(env, {name, arity, spec, description, line}) do
    options = options(spec)

    {params, options} = Keyword.pop(options, :params, [])

    [name: name, description: description, function: Function.capture(env.module, name, arity)]
    |> Keyword.merge(options)
    |> Keyword.put(:parameters, params)
    |> SynapseCore.Tool.new()
  rescue
    error in ArgumentError ->
      reraise CompileError,
              [
                file: env.file,
                line: line,
                description: "invalid @tool for #{name}/#{arity}: #{Exception.message(error)}"
              ],
              __STACKTRACE__
  end

  defp options(spec) when is_list(spec) do
    if Keyword.keyword?(spec) and Keyword.has_key?(spec, :params) and
         Enum.all?(Keyword.keys(spec), &(&1 in @options)) do
      spec
    else
      [params: spec]
    end
  end

  defp options(spec), do: [params: spec]
end
