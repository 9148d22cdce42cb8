defmodule SynapseCore.Bridge do
  @moduledoc """
  Serves Python functions to Elixir through a generated, typed client.

  `mix synapse.gen.bridge my_module` (or
  `python -m synapse_python.bridge generate --module my_module --out DIR`)
  reads the typed functions and Pydantic models of a Python module and
  writes a `.proto`, a Python gRPC server wrapping the functions, and an
  Elixir module with one function per Python function. Start the server in
  your supervision tree:

      children = [
        {SynapseCore.Bridge, name: :my_module, module: "my_module", python_path: ["priv/python"]}
      ]

  and call it through the generated module:

      {:ok, "Hello, Alice! You are 30 years old."} =
        MyModule.process_data(:my_module, %{name: "Alice", age: 30})

  A bridge runs on the same machinery as agents: its workers are Python
  processes under `synapse-shepherd`, supervised and restarted, with no
  orphans. The generated module calls `call/5` and `stream/5`, which encode
  requests and decode responses as dynamic protobuf messages in the NIF,
  from the descriptor set embedded in the generated module.
  """

  alias SynapseCore.{Error, Native, Run, Workers}
  alias SynapseCore.Agent.Options

  @typedoc "A bridge's name, as given to `start_link/1`."
  @type server :: term()

  @doc """
  A child specification; takes the options of `start_link/1`. The child's id
  is `{SynapseCore.Bridge, name}`.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    options = Options.bridge!(opts)

    %{
      id: {__MODULE__, options.name},
      start: {SynapseCore.Agent, :start_validated, [options]},
      type: :supervisor
    }
  end

  @doc """
  Starts a bridge server and links it to the caller. Returns once its workers
  serve the module.

  ## Options

  #{SynapseCore.Options.docs(Keyword.take(Options.bridge_schema(), [:name, :module]))}

  and the worker options of `SynapseCore.Agent.start_link/1`:
  #{Enum.map_join(Options.worker_keys(), ", ", &"`#{inspect(&1)}`")}.

  Raises `ArgumentError` for invalid options; a worker that cannot start
  (e.g. the module does not import) gives
  `{:error, %SynapseCore.Error{kind: :startup_failed}}` with Python's message.
  """
  @spec start_link(keyword()) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_link(opts) do
    opts |> Options.bridge!() |> SynapseCore.Agent.start_validated()
  end

  @doc false
  # Called by generated modules: a unary call of `method`
  # ("package.Service/Method") with the request's wire map.
  @spec call(server(), binary(), String.t(), map(), keyword()) ::
          {:ok, map()} | {:error, Error.t()}
  def call(server, descriptor, method, request, opts \\ []) do
    opts = SynapseCore.Options.validate!(opts, Options.bridge_call_schema(), "a bridge call")

    # Bridges serve their own node's callers: Workers.pick_local.
    with {:ok, worker} <- Workers.pick_local(server),
         {:ok, pool} <- pool(descriptor) do
      options = %{timeout: opts.timeout, window: :infinity}

      Run.unary(server, opts.timeout, fn ref ->
        Native.bridge_call(worker.channel.resource, pool, ref, method, request, options)
      end)
    end
  end

  @doc false
  # Called by generated modules: a lazy stream of the response wire maps of
  # a server-streaming `method`. Raises SynapseCore.Error on failure.
  @spec stream(server(), binary(), String.t(), map(), keyword()) :: Enumerable.t()
  def stream(server, descriptor, method, request, opts \\ []) do
    opts = SynapseCore.Options.validate!(opts, Options.bridge_stream_schema(), "a bridge stream")

    Run.stream_call(server, opts, fn ref ->
      with {:ok, worker} <- Workers.pick_local(server),
           {:ok, pool} <- pool(descriptor) do
        options = %{timeout: opts.timeout, window: opts.window}
        Native.bridge_stream_start(worker.channel.resource, pool, ref, method, request, options)
      end
    end)
  end

  # Descriptor pools are built once per descriptor set and kept in
  # :persistent_term: generated modules embed their set as a literal, so
  # there are as many as there are generated modules.
  defp pool(descriptor) do
    key = {__MODULE__, :erlang.phash2(descriptor), byte_size(descriptor)}

    case :persistent_term.get(key, nil) do
      {^descriptor, pool} ->
        {:ok, pool}

      _ ->
        with {:ok, pool} <- Native.bridge_pool(descriptor) do
          :persistent_term.put(key, {descriptor, pool})
          {:ok, pool}
        end
    end
  end
end
