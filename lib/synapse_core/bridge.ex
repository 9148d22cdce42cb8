defmodule SynapseCore.Bridge do
  @moduledoc """
  Serves Python functions to Elixir through a generated, typed client.

  `mix synapse.gen.bridge my_module` reads the typed functions and Pydantic
  models of a Python module and writes a `.proto`, a Python gRPC server
  wrapping the functions, and an Elixir module with one function per Python
  function (see `Mix.Tasks.Synapse.Gen.Bridge`). Start the server in your
  supervision tree:

      children = [
        {SynapseCore.Bridge, name: :my_module, module: "my_module", python_path: ["priv/python"]}
      ]

  and call it through the generated module:

      {:ok, "Hello, Alice! You are 30 years old."} =
        MyModule.process_data(:my_module, %{name: "Alice", age: 30})

  A bridge runs on the same machinery as agents: its workers are Python
  processes under `synapse-shepherd`, supervised and restarted, with no
  orphans, and across a cluster: the workers join the same `:pg` groups, so
  a call from a node with none of the bridge's workers runs on a connected
  node that has them, through a relay there, with the failover and errors
  of agent runs (`:unknown_agent` when no node serves it, `:worker_exited`
  when the node goes down mid-call, streams included). The generated
  module (see `SynapseCore.Bridge.Client`) turns its arguments into plain
  maps, and the NIF encodes them (and decodes the responses) as dynamic
  protobuf messages, from the descriptor set embedded in the generated
  module.

  ## Call options

  Every generated function takes, next to the Python function's own
  options:

  #{SynapseCore.Options.docs(SynapseCore.Agent.Options.bridge_call_schema())}

  and a streaming function also:

  #{SynapseCore.Options.docs(Keyword.drop(SynapseCore.Agent.Options.bridge_stream_schema(), [:timeout]))}
  """

  alias SynapseCore.{Error, Native, Remote, Run, Workers}
  alias SynapseCore.Agent.Options

  @typedoc "A bridge's name, as given to `start_link/1`."
  @type server :: term()

  @typedoc false
  # A generated module's FileDescriptorSet with its digest, taken when the
  # module compiles: calls find the set's descriptor pool by the digest, not
  # by hashing the set (a set grows with the module: hashing it cost about
  # 0.8 µs a KB, per call).
  @type descriptor :: {digest :: binary(), set :: binary()}

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

  # What a call given no option takes: the schema's defaults, validated once
  # here rather than on every call (most calls give none).
  @call_defaults SynapseCore.Options.validate!([], Options.bridge_call_schema(), "a bridge call")

  @doc false
  # Called by generated modules: a unary call of `method`
  # ("package.Service/Method") with the request's wire map. `threads` is
  # the generated module's, not the caller's: true for a sync function that
  # is not `on_loop`, whose calls to a local worker take the lane's
  # connection that the worker's threads answer (see the `threads` of
  # LaneHello in proto/synapse/v1/lane.proto); over gRPC it changes nothing.
  @spec call(server(), descriptor(), String.t(), map(), keyword(), boolean()) ::
          {:ok, map()} | {:error, Error.t()}
  def call(server, descriptor, method, request, opts \\ [], threads \\ false) do
    opts =
      if opts == [],
        do: @call_defaults,
        else: SynapseCore.Options.validate!(opts, Options.bridge_call_schema(), "a bridge call")

    options = %{timeout: opts.timeout, window: :infinity, threads: threads}

    with {:ok, run} <- start(server, descriptor, method, request, :unary, options) do
      Run.await(run, :infinity)
    end
  end

  @doc false
  # Called by generated modules: a lazy stream of the response wire maps of
  # a server-streaming `method`. Raises SynapseCore.Error on failure.
  @spec stream(server(), descriptor(), String.t(), map(), keyword()) :: Enumerable.t()
  def stream(server, descriptor, method, request, opts \\ []) do
    opts = SynapseCore.Options.validate!(opts, Options.bridge_stream_schema(), "a bridge stream")
    options = %{timeout: opts.timeout, window: opts.window, threads: false}

    fn -> start(server, descriptor, method, request, :stream, options) end
    |> Run.stream(opts.window, :halt)
    |> Stream.map(fn {:message, message} -> message end)
  end

  # A call on a worker of this node or, when this node has none ready,
  # through a relay on a node that has (see SynapseCore.Remote), as for
  # agents: the caller awaits, streams and cancels it the same way.
  # `options` is the NIF's (`timeout`, `window`, `threads`), carried as it
  # is to the relay's node.
  defp start(server, descriptor, method, request, reply, options) do
    case Workers.pick(server) do
      {:ok, {:remote, node}} ->
        Remote.start_bridge(node, server, descriptor, method, request, reply, options)

      {:ok, worker} ->
        start_on(worker, server, descriptor, method, request, reply, options)

      {:error, error} ->
        {:error, error}
    end
  end

  @doc false
  # A call on this node's workers only: what a relay for another node starts
  # for `caller` there (whose own worker it picks, see SynapseCore.Workers),
  # with the `options` the caller's node made (see start/6). Its messages go
  # to the calling process.
  @spec start_local(server(), descriptor(), String.t(), map(), :unary | :stream, map(), pid()) ::
          {:ok, Run.t()} | {:error, Error.t()}
  def start_local(server, descriptor, method, request, reply, options, caller) do
    # A node of an earlier version sends no `threads`: the loop answers.
    options = Map.put_new(options, :threads, false)

    with {:ok, worker} <- Workers.pick_local(server, caller) do
      start_on(worker, server, descriptor, method, request, reply, options)
    end
  end

  defp start_on(worker, server, descriptor, method, request, reply, options) do
    ref = make_ref()
    channel = worker.channel.resource

    started =
      with {:ok, pool} <- pool(descriptor) do
        # The request becomes a protobuf message in the NIF: on the
        # caller's scheduler when it is surely small, else on a dirty one
        # (a large one may take seconds, beyond a scheduler slot).
        case {reply, SynapseCore.JSON.small?(request)} do
          {:unary, true} ->
            Native.bridge_call(channel, pool, ref, method, request, options)

          {:unary, false} ->
            Native.bridge_call_dirty(channel, pool, ref, method, request, options)

          {:stream, true} ->
            Native.bridge_stream_start(channel, pool, ref, method, request, options)

          {:stream, false} ->
            Native.bridge_stream_start_dirty(channel, pool, ref, method, request, options)
        end
      end

    with {:ok, handle} <- started do
      {:ok,
       %Run{
         ref: ref,
         handle: handle,
         agent: server,
         owner: self(),
         receiver: if(reply == :stream, do: self()),
         timeout: options.timeout
       }}
    end
  end

  # Descriptor pools are built once per descriptor set and kept in
  # :persistent_term under its digest: generated modules embed their set as
  # a literal, so there are as many as there are generated modules.
  defp pool({digest, descriptor}) do
    key = {__MODULE__, digest}

    case :persistent_term.get(key, nil) do
      nil ->
        with {:ok, pool} <- Native.bridge_pool(descriptor) do
          :persistent_term.put(key, pool)
          {:ok, pool}
        end

      pool ->
        {:ok, pool}
    end
  end
end
