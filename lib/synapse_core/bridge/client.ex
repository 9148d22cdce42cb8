defmodule SynapseCore.Bridge.Client do
  @moduledoc """
  Defines a typed client of a Python module served by a `SynapseCore.Bridge`.

  `mix synapse.gen.bridge` writes such a module from the bridge's
  intermediate representation; it is a declaration of what the Python side
  offers, and this module turns it into functions with `@doc` and `@spec`,
  a struct (with `@type t`) per Pydantic model and a module per enum:

      defmodule MyModule do
        use SynapseCore.Bridge.Client,
          python_module: "my_module",
          service: "synapse.bridge.my_module.MyModule",
          doc: "The Python module's docstring.",
          regenerate: "mix synapse.gen.bridge my_module",
          descriptor: "...base64 FileDescriptorSet..."

        defmodel InputData, python: "my_module:InputData", fields: [name: :string, age: :int64]

        defbridge :process_data,
          doc: "Processes the input data and returns a greeting.",
          rpc: "ProcessData",
          params: [data: InputData],
          returns: :string
      end

  defines `MyModule.process_data/3` (`{:ok, String.t()} | {:error, SynapseCore.Error.t()}`),
  `MyModule.process_data!/3` and the struct `MyModule.InputData`.

  ## Types

  A declared type is a scalar (`:int64`, `:double`, `:bool`, `:string`,
  `:bytes`, `:date`, `:datetime`), `{:optional, t}`, `{:list, t}`,
  `{:map, t}` (string keys), `{:tuple, [t, ...]}`, `{:union, [field: t, ...]}`
  (the fields of the protobuf `oneof`), or the name of a model, enum or
  custom type declared in the same module. A function that returns nothing
  declares `returns: :none`.

  ## Declarations

    * `defbridge name, opts` - a function. `:rpc` is the gRPC method,
      `:kind` is `:sync` (the default), `:async` or `:stream` (a server
      stream: the function returns a lazy `Stream`), `:on_loop` says that
      the bridge's config has a sync function called on the worker's event
      loop rather than in a thread (the docs say so), `:python` the Python
      function's name when it differs, `:doc` its docstring. `:params` are
      the required parameters, in order (positional arguments after the
      bridge's name), `:options` those with a default (keyword options).
      Each is `name: type` or `name: [type: t, description: ..., default: ...,
      default_factory: "module:function", constraints: [ge: 0, ...]]`.
    * `defmodel Name, opts` - a Pydantic model: `:python` (`"module:Class"`),
      `:doc` and `:fields` (as parameters; a field with neither `:default`
      nor `:default_factory` is required).
    * `defenum Name, opts` - an `Enum` or a `Literal`: `:python`
      (`"module:Class"`, or `nil` for a `Literal`), `:doc` and `:values`,
      the Elixir value (an atom or an integer) of each protobuf enum value.
    * `deftype Name, opts` - a custom type mapping (see the Bridge's
      configuration in `Mix.Tasks.Synapse.Gen.Bridge`): `:python`, `:proto`
      (the scalar it travels as) and optionally `:elixir`, a
      `{module, encode, decode}` pair of functions converting between the
      Elixir value and that scalar, with `:spec`, the Elixir typespec as a
      string. The functions are checked when the client is compiled.
  """

  alias SynapseCore.Bridge.{Codec, Types}
  alias SynapseCore.{Bridge, Error}

  @declarations [defbridge: 2, defmodel: 2, defenum: 2, deftype: 2]

  @doc false
  def declaration_names, do: Keyword.keys(@declarations)

  # Elixir's reserved words: no function (the generator refuses them) and no
  # variable (see variable/1) of a client is named so.
  @reserved ~w(do end fn nil true false when and or not in catch rescue after else)a

  @doc false
  def reserved_words, do: @reserved

  @doc false
  defmacro __using__(opts) do
    quote do
      import SynapseCore.Bridge.Client, only: unquote(@declarations)
      Module.register_attribute(__MODULE__, :synapse_bridge, accumulate: true)
      @synapse_bridge_client unquote(opts)
      @before_compile SynapseCore.Bridge.Client
    end
  end

  @doc "Declares a bridged Python function."
  defmacro defbridge(name, opts), do: declare(:function, name, opts)

  @doc "Declares a Pydantic model: a struct module named `Name` inside the client."
  defmacro defmodel(name, opts), do: declare(:model, name, opts)

  @doc "Declares an enum: a module named `Name` inside the client, with its `@type t`."
  defmacro defenum(name, opts), do: declare(:enum, name, opts)

  @doc "Declares a custom type mapping."
  defmacro deftype(name, opts), do: declare(:custom, name, opts)

  # The declaration is evaluated with the module's body (defaults may be
  # sigils, names are aliases) and kept until every one is known.
  defp declare(what, name, opts) do
    quote do
      @synapse_bridge {unquote(what), unquote(name), unquote(opts)}
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    client = Module.get_attribute(env.module, :synapse_bridge_client)

    client =
      Keyword.validate!(client, [:python_module, :service, :descriptor, doc: nil, regenerate: nil])

    declarations = env.module |> Module.get_attribute(:synapse_bridge) |> Enum.reverse()

    context =
      env.module
      |> Types.context(declarations)
      |> Map.merge(%{python_module: client[:python_module], service: client[:service]})

    types =
      for {kind, name, opts} <- declarations, kind in [:model, :enum] do
        type_module(kind, Map.fetch!(context.names, Types.short(name)), opts, context)
      end

    functions = for {:function, name, opts} <- declarations, do: function(name, opts, context)
    descriptor = Base.decode64!(client[:descriptor], ignore: :whitespace)
    # The set's identity for SynapseCore.Bridge's pool of it (not a
    # safeguard: the set is this module's own).
    digest = :erlang.md5(descriptor)

    quote do
      @moduledoc unquote(moduledoc(client, declarations, context))

      unquote_splicing(types)

      @doc false
      def __bridge__ do
        %{
          module: unquote(client[:python_module]),
          service: unquote(client[:service]),
          descriptor: unquote(descriptor),
          descriptor_digest: unquote(digest)
        }
      end

      unquote_splicing(functions)
    end
  end

  ## Functions

  defp function(name, opts, context) do
    opts =
      Keyword.validate!(opts, [
        :rpc,
        :returns,
        kind: :sync,
        on_loop: false,
        python: nil,
        doc: nil,
        params: [],
        options: []
      ])

    where = "defbridge #{inspect(name)}"
    params = Enum.map(opts[:params], &Types.field(&1, context, where))
    options = Enum.map(opts[:options], &Types.field(&1, context, where))
    returns = Types.resolve(Keyword.fetch!(opts, :returns), context, "#{where}, :returns")
    kind = opts[:kind]

    unless kind in [:sync, :async, :stream] do
      raise ArgumentError,
            "#{where}: :kind must be :sync, :async or :stream, got: #{inspect(kind)}"
    end

    unless is_boolean(opts[:on_loop]) do
      raise ArgumentError, "#{where}: :on_loop must be a boolean, got: #{inspect(opts[:on_loop])}"
    end

    call = %{
      method: "#{context.service}/#{Keyword.fetch!(opts, :rpc)}",
      stream: kind == :stream,
      # Answered by the worker's threads, on a lane connection of their own
      # (see SynapseCore.Bridge.call/6), rather than by its event loop.
      threads: kind == :sync and not opts[:on_loop],
      params: Enum.map(params, &{Atom.to_string(&1.name), Types.wire(&1)}),
      options: Enum.map(options, &{&1.name, Atom.to_string(&1.name), Types.wire(&1)}),
      returns: if(returns == :none, do: :none, else: Codec.wire_type(returns))
    }

    args =
      params
      |> Enum.map(& &1.name)
      |> variables()
      |> Enum.map(&Macro.var(&1, __MODULE__.Arguments))

    arg_specs = Enum.map(params, &Types.spec(&1.type, true, context))
    result = Types.spec(returns, false, context)
    doc = function_doc(name, opts, {kind, returns}, params, options, context)
    define = &definition(&1, &2, &3, {args, arg_specs}, &4, call)

    if kind == :stream do
      define.(name, :__call__, doc, quote(do: Enumerable.t()))
    else
      bang =
        "Like `#{name}/#{length(params) + 2}`, but returns the value or raises `SynapseCore.Error`."

      quote do
        unquote(
          define.(
            name,
            :__call__,
            doc,
            quote(do: {:ok, unquote(result)} | {:error, SynapseCore.Error.t()})
          )
        )

        unquote(define.(:"#{name}!", :__call__!, bang, result))
      end
    end
  end

  # A function of the client: it passes its arguments and the call's
  # description to `runtime` (`__call__/5` or `__call__!/5`).
  defp definition(name, runtime, doc, {args, arg_specs}, returned, call) do
    server = Macro.var(:server, __MODULE__)
    opts = Macro.var(:opts, __MODULE__)

    quote do
      @doc unquote(doc)
      @spec unquote(name)(Bridge.server(), unquote_splicing(arg_specs), keyword()) ::
              unquote(returned)
      def unquote(name)(unquote(server), unquote_splicing(args), unquote(opts) \\ []) do
        SynapseCore.Bridge.Client.unquote(runtime)(
          __MODULE__,
          unquote(Macro.escape(call)),
          unquote(server),
          unquote(args),
          unquote(opts)
        )
      end
    end
  end

  # The parameters' Elixir variables, one each: distinct parameters can ask
  # for the same one (`_x` and `arg_x`, `_x` and `X`), and a variable twice
  # in the function head would make the call match only equal arguments. A
  # parameter whose name is its variable keeps it; the others, in order,
  # take the first of `name`, `name_2`, ... that no parameter has.
  defp variables(names) do
    wanted = Enum.map(names, &variable/1)
    own = for {name, name} <- Enum.zip(names, wanted), into: MapSet.new(), do: name

    {variables, _taken} =
      names
      |> Enum.zip(wanted)
      |> Enum.map_reduce(own, fn
        {name, name}, taken -> {name, taken}
        {_name, variable}, taken -> free(variable, taken, 1)
      end)

    variables
  end

  defp free(variable, taken, n) do
    candidate = if n == 1, do: variable, else: :"#{variable}_#{n}"

    if MapSet.member?(taken, candidate),
      do: free(variable, taken, n + 1),
      else: {candidate, MapSet.put(taken, candidate)}
  end

  # A Python parameter name as an Elixir variable (only what the docs show:
  # the variables are hygienic).
  defp variable(name) do
    text = Atom.to_string(name)

    cond do
      String.starts_with?(text, "_") or String.upcase(String.first(text)) == String.first(text) ->
        :"arg_#{text |> String.trim_leading("_") |> String.downcase()}"

      # A reserved word as a variable in the head either does not compile
      # (`fn`) or reads as code in the docs' signature.
      name in [:server, :opts | @reserved] ->
        :"#{name}_"

      true ->
        name
    end
  end

  defp function_doc(name, opts, {kind, returns}, params, options, context) do
    python = "`#{context.python_module}.#{opts[:python] || name}`"

    parameters =
      if params != [] do
        "## Parameters\n\n" <>
          Enum.map_join(params, "\n", &Types.bullet("`#{&1.name}`", &1, true, context))
      end

    call_options =
      Enum.map(options, &Types.bullet("`#{inspect(&1.name)}`", &1, true, context)) ++
        [
          "  * `:timeout`#{if kind == :stream, do: ", `:window`"} - see \"Call options\" in `SynapseCore.Bridge`."
        ]

    how =
      case {kind, opts[:on_loop]} do
        {:sync, true} ->
          "Calls #{python}, a function the bridge's config has called on the worker's " <>
            "event loop: while it runs, the worker serves nothing else."

        {:sync, false} ->
          "Calls #{python}, a function run in a worker thread."

        {:async, _} ->
          "Calls #{python}, an `async def` function."

        {:stream, _} ->
          "Returns a lazy stream of `#{Macro.to_string(Types.spec(returns, false, context))}`: " <>
            "what the async generator #{python} yields, as it yields it. Enumerating it raises " <>
            "`SynapseCore.Error` if the call fails; halting it cancels the call."
      end

    [
      opts[:doc] || "Calls #{python}.",
      parameters,
      "## Options\n\n" <> Enum.join(call_options, "\n"),
      how
    ]
    |> Enum.reject(&is_nil/1)
    |> Enum.join("\n\n")
  end

  ## Models and enums

  defp type_module(:model, module, opts, context) do
    opts = Keyword.validate!(opts, [:python, doc: nil, fields: []])
    fields = Enum.map(opts[:fields], &Types.field(&1, context, "defmodel #{inspect(module)}"))

    field_specs =
      for field <- fields do
        spec = Types.spec(field.type, false, context)

        spec =
          if field.required or match?({:optional, _}, field.type),
            do: spec,
            else: quote(do: unquote(spec) | nil)

        {field.name, spec}
      end

    wire_fields = Enum.map(fields, &{&1.name, Atom.to_string(&1.name), Types.wire(&1)})

    quote do
      defmodule unquote(module) do
        @moduledoc unquote(model_doc(module, opts, fields, context))

        defstruct unquote(Enum.map(fields, & &1.name))

        @type t :: %__MODULE__{unquote_splicing(field_specs)}

        @doc false
        def __bridge__(:kind), do: :model
        def __bridge__(:fields), do: unquote(Macro.escape(wire_fields))

        @doc false
        def __bridge__(:to_wire, value),
          do: SynapseCore.Bridge.Codec.model_to_wire(__MODULE__, __bridge__(:fields), value)

        def __bridge__(:from_wire, wire),
          do: SynapseCore.Bridge.Codec.model_from_wire(__MODULE__, __bridge__(:fields), wire)
      end
    end
  end

  defp type_module(:enum, module, opts, _context) do
    opts = Keyword.validate!(opts, [:values, python: nil, doc: nil])
    values = Keyword.fetch!(opts, :values)
    elixir = Enum.map(values, &elem(&1, 0))

    source =
      if opts[:python],
        do: "the Python Enum `#{String.replace(opts[:python], ":", ".")}`",
        else: "a Python `Literal`"

    doc =
      [opts[:doc], "Values of #{source}: #{Enum.map_join(elixir, ", ", &"`#{inspect(&1)}`")}."]
      |> Enum.reject(&is_nil/1)
      |> Enum.join("\n\n")

    quote do
      defmodule unquote(module) do
        @moduledoc unquote(doc)

        @type t :: unquote(Types.union(elixir))

        @doc false
        def __bridge__(:kind), do: :enum
        def __bridge__(:values), do: unquote(values)

        @doc false
        def __bridge__(:to_wire, value),
          do: SynapseCore.Bridge.Codec.enum_to_wire(__bridge__(:values), value)

        def __bridge__(:from_wire, name),
          do: SynapseCore.Bridge.Codec.enum_from_wire(__bridge__(:values), name)
      end
    end
  end

  defp model_doc(module, opts, fields, context) do
    intro = opts[:doc] || "The Pydantic model `#{String.replace(opts[:python], ":", ".")}`."

    if fields == [] do
      intro
    else
      bullets =
        Enum.map_join(fields, "\n", &Types.bullet("`#{inspect(&1.name)}`", &1, false, context))

      "#{intro}\n\n## Fields\n\n#{bullets}\n\nA field left `nil` takes its Python default, " <>
        "if it has one. Functions accept a `#{inspect(module)}` or a map with the same (atom) keys."
    end
  end

  defp moduledoc(client, declarations, context) do
    functions =
      for {:function, name, opts} <- declarations do
        arity = length(Keyword.get(opts, :params, [])) + 2

        case opts[:doc] do
          nil -> "  * `#{name}/#{arity}`"
          doc -> "  * `#{name}/#{arity}` - #{doc |> String.split("\n") |> hd()}"
        end
      end

    regenerate =
      if client[:regenerate],
        do: " Do not edit it; regenerate it with:\n\n    #{client[:regenerate]}",
        else: ""

    [
      client[:doc],
      "A typed client of the Python module `#{context.python_module}`, served by a " <>
        "`SynapseCore.Bridge`:\n\n" <>
        "    children = [{SynapseCore.Bridge, name: :my_bridge, module: #{inspect(context.python_module)}}]",
      "Each function takes the bridge's name first and returns `{:ok, value}` or " <>
        "`{:error, %SynapseCore.Error{}}` (the `!` variants return the value or raise); a " <>
        "streaming function returns a lazy `Stream`. Parameters with a Python default are " <>
        "options; an option left out (or `nil`) takes the Python default.",
      Enum.join(functions, "\n"),
      "Generated by `mix synapse.gen.bridge` from the Python module's types." <> regenerate
    ]
    |> Enum.reject(&(&1 in [nil, ""]))
    |> Enum.join("\n\n")
  end

  ## At run time

  @doc false
  # Called by the generated functions.
  @spec __call__(module(), map(), Bridge.server(), [term()], keyword()) ::
          {:ok, term()} | {:error, Error.t()} | Enumerable.t()
  def __call__(client, call, server, args, opts) do
    %{descriptor: set, descriptor_digest: digest} = client.__bridge__()
    descriptor = {digest, set}
    {given, opts} = split_options(call, opts)

    case request(call, args, given) do
      {:ok, request} when call.stream ->
        server
        |> Bridge.stream(descriptor, call.method, request, opts)
        |> Stream.map(&decode!(call.returns, &1))

      {:ok, request} ->
        with {:ok, response} <-
               Bridge.call(server, descriptor, call.method, request, opts, call.threads) do
          decode(call.returns, response)
        end

      {:error, error} when call.stream ->
        Stream.map([error], &raise/1)

      {:error, error} ->
        {:error, error}
    end
  end

  @doc false
  @spec __call__!(module(), map(), Bridge.server(), [term()], keyword()) :: term()
  def __call__!(client, call, server, args, opts) do
    case __call__(client, call, server, args, opts) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  # The function's own options, and the call's (most calls give none).
  defp split_options(_call, []), do: {[], []}

  defp split_options(call, opts),
    do: Keyword.split(checked!(call, opts), Enum.map(call.options, &elem(&1, 0)))

  # The options of the call: the function's own and the call's, so that an
  # unknown one is refused naming both (their values are checked later, by
  # the codec and by SynapseCore.Bridge).
  defp checked!(call, opts) do
    {schema, what} =
      if call.stream,
        do: {SynapseCore.Agent.Options.bridge_stream_schema(), "a bridge stream"},
        else: {SynapseCore.Agent.Options.bridge_call_schema(), "a bridge call"}

    own = for {key, _name, _type} <- call.options, do: {key, [type: :any]}
    SynapseCore.Options.validate!(opts, own ++ schema, what)
    opts
  end

  defp request(call, args, given) do
    params =
      Enum.zip_with(call.params, args, fn {name, type}, value ->
        {name, Codec.to_wire(type, value)}
      end)

    options = for {key, name, type} <- call.options, do: {name, Codec.to_wire(type, given[key])}
    {:ok, Map.new(params ++ options)}
  catch
    {Codec, %Error{} = error} -> {:error, error}
  end

  defp decode(:none, _response), do: {:ok, nil}

  defp decode(type, response) do
    {:ok, Codec.from_wire(type, response["value"])}
  catch
    {Codec, %Error{} = error} -> {:error, error}
  end

  defp decode!(type, response) do
    case decode(type, response) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end
end
