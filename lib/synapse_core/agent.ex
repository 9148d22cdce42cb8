defmodule SynapseCore.Agent do
  @moduledoc """
  Start, supervise and call pydantic-ai agents that live in Python workers.

  An agent is a name, one or more Python worker processes hosting a
  pydantic-ai `Agent`, and a supervisor that restarts workers that exit. Put
  it in your supervision tree:

      children = [
        {SynapseCore.Agent,
         name: :support,
         agent: "my_app.agents:support_agent",
         model: "openai:gpt-4o",
         env: ["OPENAI_API_KEY"]}
      ]

  or start it from anywhere with `SynapseCore.start_agent/1`. Then call it:

      {:ok, result} = SynapseCore.Agent.run_sync(:support, "Where is my order 42?")
      result.output
      result.usage.output_tokens
      {:ok, next} = SynapseCore.Agent.run_sync(:support, "And order 43?", message_history: result.messages)

  Calls go straight from the calling process to a worker through the NIF:
  no GenServer sits in their path, so any number of runs on one agent are
  in flight at once.

  ## As in Python

  A run is pydantic-ai's own `agent.run`: `run_sync/3` and `run/3` make
  non-streamed model requests, with Elixir tools or without (their calls
  travel beside the run); only `run_stream/3` streams. The model receives
  what it would receive from a Python caller of the same agent: the history
  goes back as pydantic-ai's own bytes (`SynapseCore.Messages`), the deps
  reach the agent's tools, instructions and validators, the output keeps its
  Python type's name (`SynapseCore.Result`).

  ## Deps

  pydantic-ai agents get their dependencies in `ctx.deps`. From Elixir, the
  `:deps` of a run is data (maps, lists, strings, numbers, ...), which
  reaches Python as JSON and becomes the run's deps in one of two ways
  (dates and times, `Date`, `Time`, `NaiveDateTime` and `DateTime`, go as
  their ISO 8601 text, as in tool results; other structs are refused with
  an error naming them):

    * **validated into the agent's `deps_type`** with Pydantic (a dataclass,
      a Pydantic model, `int`, ...; a date may be given as `"2025-01-10"`):

          # support_agent = Agent(..., deps_type=SupportDeps)
          SynapseCore.Agent.run_sync(:support, "Hi", deps: %{customer_id: 123, plan: "pro"})

      Data that does not validate fails the run with `:invalid_argument`,
      `details.errors` listing each problem with its path (`["deps",
      "customer_id"]`). An agent with no `deps_type` gets the data as plain
      Python values (dicts with string keys, lists, ...); one whose
      `deps_type` is `None` gets `None`.

    * **built by a deps factory** the agent names with `:deps_factory`
      (`"my_app.deps:build"`), for deps that cannot be data (a database
      connection, an HTTP client). The factory is called for each run with
      the data (validated against its first parameter's annotation, if it
      has one; a factory with no parameter is called with none), sync or
      async, and returns the deps. When it returns a context manager, sync
      or async (an `@asynccontextmanager`, an `httpx.AsyncClient`), the
      deps are what entering it gives, and it is exited when the run ends,
      whether the run succeeds, fails or is cancelled:

          # my_app/deps.py
          @asynccontextmanager
          async def build(ref: CustomerRef) -> AsyncIterator[SupportDeps]:
              async with connect_db() as db:
                  yield SupportDeps(customer_id=ref.customer_id, db=db)

          {SynapseCore.Agent, name: :support, agent: "my_app.agents:support_agent",
           deps_factory: "my_app.deps:build"}

  Elixir tools get the `:deps` term itself, unconverted, in their
  `SynapseCore.Tool.Context` (`context.deps`). A term with no JSON form (a
  pid, a tuple) can still be given for them: an agent that declares no deps
  then gets `None`, and one that needs the data fails the run with
  `:invalid_argument`.

  ## Human in the loop

  Tool calls that need a person's decision (pydantic-ai's deferred tools: a
  Python tool with `requires_approval=True` or raising `ApprovalRequired` or
  `CallDeferred`, an Elixir tool with `requires_approval: true`) are carried
  two ways:

    * **the run ends with them**, as in pydantic-ai: its output is a
      `SynapseCore.DeferredToolRequests` (the agent's output type must allow
      it), and a later run resumes it with the result as `:message_history`
      and the decisions as `:deferred_tool_results`
      (`SynapseCore.DeferredToolResults`), usually with a `nil` prompt;
    * **the run asks while it waits**, when given an `:approver` (a pid,
      a name, `{:via, ...}`, a `:pg` group, on any node): the approver
      receives `{:synapse_approval, %SynapseCore.Approval{}}` per call and
      answers with `approve/3` or `deny/3` from any process on any node.
      A request is denied when `:approval_timeout` passes; the run's
      `:timeout` bounds the wait; its caller exiting cancels it.

  See the repository's `docs/approvals.md` for both, with a LiveView.
  ## Agents defined from Elixir

  Without `:agent`, the agent is pydantic-ai's declarative agent spec (its
  `AgentSpec`), built in the worker with `Agent.from_spec`, with no Python
  file of yours. Every field of the spec is an option:

      {SynapseCore.Agent,
       name: :docs,
       model: "openai:gpt-4o",
       instructions: "Answer from the documentation.",
       model_settings: [temperature: 0.2],
       retries: [tools: 2, output: 3],
       capabilities: [
         {"MCP", url: "https://docs.example.com/mcp", tool_prefix: "docs"},
         {"Thinking", effort: "low"}
       ],
       output_schema: %{"type" => "object", "properties" => %{"answer" => %{"type" => "string"}}},
       env: ["OPENAI_API_KEY"]}

  `:capabilities` are the capabilities pydantic-ai's spec knows, by name
  (`"MCP"` for an MCP server's tools, `"WebSearch"`, `"Thinking"`,
  `"PrefixTools"`, ...), with their arguments. A run's `deps:` data is
  what the spec's templates render (`instructions: "Greet {{name}}."` with
  `deps: %{name: "Ada"}`), as the dict a Python caller passes. A spec can
  also be a file, YAML or JSON, as `Agent.from_file` reads it, kept in
  your application:

      {SynapseCore.Agent, name: :support, spec: {:my_app, "priv/agents/support.yaml"}}

  The file is read when the agent starts, and the other options supplement
  it as `Agent.from_spec`'s arguments supplement a spec (instructions and
  capabilities are added, model settings merged, retries merged by
  category, the rest replaced).

  A spec that pydantic-ai does not accept fails the start with
  `:startup_failed`, `details.reason` `:invalid_argument` and
  `details.errors` listing each problem with its path: a field of the wrong
  type (`["retries"]`), a field the spec does not have (refused, where
  pydantic-ai would ignore it), an unknown capability or arguments it
  refuses (`["capabilities", 1]`). Options of the wrong type or range, and
  a spec file that cannot be read, raise `ArgumentError` before anything
  starts.
  """

  alias SynapseCore.{
    AgentSupervisor,
    Error,
    Messages,
    Native,
    Prompt,
    Remote,
    Result,
    Run,
    Telemetry,
    Tool,
    TraceContext,
    ToolRunner,
    Worker,
    Workers
  }

  alias SynapseCore.Agent.Options

  @typedoc "An agent's name: any term, usually an atom."
  @type name :: term()

  @typedoc "Options of `start_link/1`; see its documentation."
  @type option ::
          {:name, name()}
          | {:agent, String.t()}
          | {:model, String.t()}
          | {:instructions, String.t()}
          | {:output_schema, map()}
          | {:tools, [Tool.t() | module()]}
          | {:deps_factory, String.t()}
          | {:workers, pos_integer()}
          | {:python, String.t()}
          | {:python_path, [Path.t()]}
          | {:env, SynapseCore.Python.env_option()}
          | {:cwd, Path.t()}
          | {:startup_timeout, pos_integer()}
          | {:shutdown_timeout, non_neg_integer()}
          | {:await_ready, boolean()}
          | {:log_level, SynapseCore.Worker.log_level()}
          | {:max_stuck_threads, non_neg_integer()}
          | {:busy_wait_us, non_neg_integer()}

  @typedoc "Options of a run; see `run_sync/3`."
  @type run_option ::
          {:message_history, Messages.t() | Result.t() | [map()] | nil}
          | {:output_tool_return_content, String.t() | nil}
          | {:messages, boolean()}
          | {:model_settings, map() | keyword() | nil}
          | {:usage_limits, map() | keyword() | nil}
          | {:timeout, timeout()}
          | {:tools, [Tool.t() | module()]}
          | {:deps, term()}
          | {:trace_context, %{String.t() => String.t()} | keyword(String.t()) | nil}
          | {:deferred_tool_results, SynapseCore.DeferredToolResults.t() | nil}
          | {:approver, SynapseCore.Approval.approver() | nil}
          | {:approval_timeout, timeout()}

  @typedoc "Options of a streamed run; see `run_stream/3`."
  @type stream_option ::
          {:window, pos_integer() | :infinity}
          | {:stream_to, pid() | [pid()] | {:pg, term()} | {:pg, atom(), term()}}
          | {:events, :all | [SynapseCore.Event.kind(), ...]}

  @doc """
  A child specification, so that an agent can be put in a supervision tree.
  Takes the options of `start_link/1`; the child's id is `{SynapseCore.Agent, name}`.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    options = Options.agent!(opts)

    # The validated options, not `opts`: a supervisor's reports show the
    # start arguments, and validated options keep the token in a closure.
    %{
      id: {__MODULE__, options.name},
      start: {__MODULE__, :start_validated, [options]},
      type: :supervisor
    }
  end

  @doc false
  @spec start_validated(Options.t()) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_validated(%Options{} = options) do
    options |> AgentSupervisor.start_and_await() |> unwrap_start_error()
  end

  @doc """
  Starts an agent and links it to the caller. Returns once every worker is
  ready and has loaded the agent (unless `await_ready: false`).

  ## Options

  #{SynapseCore.Options.docs(Options.agent_schema())}

  Raises `ArgumentError` for invalid options. When a worker cannot start
  (no interpreter, a module that does not import, an attribute that is not
  an agent, ...), returns `{:error, %SynapseCore.Error{kind: :startup_failed}}`
  whose message carries Python's own.
  """
  @spec start_link([option()]) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_link(opts) do
    opts |> Options.agent!() |> start_validated()
  end

  @doc false
  @spec unwrap_start_error({:ok, pid()} | {:error, term()}) ::
          {:ok, pid()} | {:error, Error.t() | term()}
  def unwrap_start_error({:error, {:already_started, _pid}}),
    do: {:error, Error.new(:invalid_argument, "an agent with this name is already running")}

  def unwrap_start_error(other), do: other

  @doc """
  Runs the agent on `prompt` and waits for its result.

  `prompt` is a string, or a list of parts for multimodal input (text,
  images, audio, documents as binaries or URLs; see `SynapseCore.Prompt`):

      SynapseCore.Agent.run_sync(:vision, ["What is this?", {:binary, png, "image/png"}])

  `nil` sends no new user message (pydantic-ai's `None`): the run goes on
  from its `:message_history`. An empty string is an empty user message.

  ## Options

  #{SynapseCore.Options.docs(Options.call_schema())}

  ## Errors

  Returns `{:error, %SynapseCore.Error{}}` whose `kind` is, among others,
  `:invalid_argument` (a prompt that is not valid, see `SynapseCore.Prompt`),
  `:resource_exhausted` (a request over `:max_message_bytes`),
  `:unknown_agent` (no agent has that name), `:unavailable` (no worker is
  ready, e.g. while one restarts), `:worker_exited`, `:timeout`,
  `:output_validation_failed`, `:tool_failed`,
  `:model_http_error`, `:model_unavailable` or `:python_error`; see
  `SynapseCore.Error`. A run that fails once it began keeps what it did in
  the error's details (`:messages`, to resume from; see `SynapseCore.Error`).
  Raises `ArgumentError` for invalid options.
  """
  @spec run_sync(name(), Prompt.t(), [run_option()]) :: {:ok, Result.t()} | {:error, Error.t()}
  def run_sync(name, prompt, opts \\ [])
      when is_binary(prompt) or is_list(prompt) or is_nil(prompt) do
    with {:ok, run} <- start(name, prompt, call!(opts), :sync, self(), :infinity),
         do: await(run)
  end

  @doc """
  Like `run_sync/3`, but returns the result directly and raises
  `SynapseCore.Error` on failure.
  """
  @spec run_sync!(name(), Prompt.t(), [run_option()]) :: Result.t()
  def run_sync!(name, prompt, opts \\ []) do
    case run_sync(name, prompt, opts) do
      {:ok, result} -> result
      {:error, error} -> raise error
    end
  end

  @doc """
  Starts a run and returns at once with a `SynapseCore.Run`; get its result
  with `await/2` or `yield/2`, stop it with `cancel/1`.

  Takes the options of `run_sync/3`. The run is cancelled if the calling
  process exits.

      {:ok, run} = SynapseCore.Agent.run(:support, "Summarise this ticket: ...")
      # ... other work ...
      {:ok, result} = SynapseCore.Agent.await(run)
  """
  @spec run(name(), Prompt.t(), [run_option()]) :: {:ok, Run.t()} | {:error, Error.t()}
  def run(name, prompt, opts \\ []) when is_binary(prompt) or is_list(prompt) or is_nil(prompt) do
    start(name, prompt, call!(opts), :unary, self(), :infinity)
  end

  # What a run given no option takes: the schema's defaults, validated once
  # here rather than on every run (most runs give none).
  @call_defaults Options.call!([])

  defp call!([]), do: @call_defaults
  defp call!(opts), do: Options.call!(opts)

  # Starts a run on a worker of this node or, when this node has none ready,
  # through a relay on a node that has (see SynapseCore.Remote). `reply` is
  # how its outcome is delivered: `:sync` (one reply to a caller that waits
  # for it; nobody else holds the run), `:unary` (one reply, the run may be
  # cancelled) or `:stream` (events, then the outcome). The run's telemetry
  # span starts here, in the caller, and ends where its answer is received:
  # in the caller's `Run`, or (`stream_to`, when the receiver is not ours
  # to watch) in the run's tool runner or, on another node, an observer.
  defp start(name, prompt, call, reply, receiver, window, stream_to \\ false) do
    # The caller's trace context, here, in the caller: a run on another node
    # carries it there.
    call = %{call | trace_context: call.trace_context || TraceContext.current()}

    with :ok <- check_prompt(prompt),
         {:ok, target} <- Workers.pick(name) do
      span = run_span(name, reply, target)
      observer = if stream_to, do: span

      started =
        try do
          case target do
            {:remote, node} ->
              Remote.start(node, name, prompt, call, reply, receiver, window, observer)

            worker ->
              start_on(worker, name, prompt, call, reply, receiver, window, observer)
          end
        rescue
          # Tools that clash with the agent's: the span ends before the raise.
          error in ArgumentError ->
            failure = Error.new(:invalid_argument, Exception.message(error))
            Telemetry.run_stop(span, {:error, failure})
            reraise error, __STACKTRACE__
        end

      case started do
        {:ok, run} -> {:ok, %{run | span: if(not stream_to, do: span)}}
        {:error, error} -> Telemetry.run_stop(span, {:error, error})
      end
    else
      {:error, error} -> name |> run_span(reply, nil) |> Telemetry.run_stop({:error, error})
    end
  end

  defp run_span(name, reply, target) do
    {node, worker} =
      case target do
        {:remote, node} -> {node, nil}
        %{index: index} -> {node(), index}
        nil -> {nil, nil}
      end

    mode = %{sync: :sync, unary: :async, stream: :stream}[reply]
    Telemetry.run_start(%{agent: name, mode: mode, node: node, worker: worker})
  end

  @doc false
  # A run on this node's workers only: what a relay for another node starts
  # for `caller` there (whose own worker it picks, see SynapseCore.Workers).
  @spec start_local(
          name(),
          Prompt.t(),
          Options.call(),
          :sync | :unary | :stream,
          pid(),
          pos_integer() | :infinity,
          pid()
        ) ::
          {:ok, Run.t()} | {:error, Error.t()}
  def start_local(name, prompt, call, reply, receiver, window, caller) do
    with {:ok, worker} <- Workers.pick_local(name, caller) do
      start_on(worker, name, prompt, call, reply, receiver, window, nil)
    end
  end

  # A run_sync with no Elixir tools is one unary RPC (RunSync). The others
  # use the Run stream, on which tool calls come and go and a cancel
  # travels, so that a cancelled run answers what it did. Either way the
  # run in Python is a plain `agent.run` unless it is streamed. `observer`
  # is the telemetry span of a run whose tool runner reports its end.
  defp start_on(worker, name, prompt, call, reply, receiver, window, observer) do
    started =
      case {tools(worker, call), reply} do
        {[], :sync} when call.approver == nil ->
          start_unary(name, worker.channel, prompt, call)

        {tools, _} ->
          style = if reply == :stream, do: :stream, else: :unary
          definitions = worker.tool_definitions ++ Enum.map(call.tools, &Tool.definition/1)
          run = {call, tools, definitions, receiver, window, style, observer}
          start_on_stream(name, worker.channel, prompt, run)
      end

    with {:ok, run} <- started, do: {:ok, %{run | worker: worker.pid}}
  end

  defp start_unary(name, channel, prompt, call) do
    ref = make_ref()
    request = request(name, prompt, call, [], false)

    started =
      if large?(call.message_history) or large_prompt?(prompt),
        do: Native.run_start_dirty(channel.resource, ref, request, call.timeout),
        else: Native.run_start(channel.resource, ref, request, call.timeout)

    case started do
      {:ok, handle} ->
        {:ok, %Run{ref: ref, handle: handle, agent: name, owner: self(), timeout: call.timeout}}

      {:error, %Error{} = error} ->
        {:error, error}
    end
  end

  defp start_on_stream(
         name,
         channel,
         prompt,
         {call, tools, definitions, receiver, window, reply, observer}
       ) do
    ref = make_ref()

    runner =
      (tools != [] or observer != nil or call.approver != nil) &&
        start_runner(name, call, tools, observer)

    request = request(name, prompt, call, definitions, reply == :unary)

    options = %{
      receiver: receiver,
      runner: runner || nil,
      timeout: call.timeout,
      window: window,
      reply: reply
    }

    started =
      try do
        if large?(call.message_history) or large_prompt?(prompt),
          do: Native.run_stream_start_dirty(channel.resource, ref, request, options),
          else: Native.run_stream_start(channel.resource, ref, request, options)
      rescue
        # Options are validated before; should the NIF still refuse its
        # arguments, the run's tool runner must not outlive the attempt.
        error ->
          if runner, do: ToolRunner.stop(runner)
          reraise error, __STACKTRACE__
      end

    case started do
      {:ok, handle} ->
        if runner, do: ToolRunner.attach(runner, handle, ref)

        {:ok,
         %Run{
           ref: ref,
           handle: handle,
           agent: name,
           owner: self(),
           receiver: if(reply == :stream, do: receiver),
           timeout: call.timeout
         }}

      {:error, %Error{} = error} ->
        if runner, do: ToolRunner.stop(runner)
        {:error, error}
    end
  end

  defp start_runner(name, call, tools, span) do
    {:ok, runner} =
      ToolRunner.start(%{
        tools: tools,
        agent: name,
        deps: call.deps,
        owner: self(),
        span: span,
        approver: call.approver,
        approval_timeout: call.approval_timeout
      })

    runner
  end

  # The agent's tools and the run's, which must not share a name (each
  # list's names are distinct already: SynapseCore.Tool.expand/1).
  defp tools(%{tools: agent_tools}, %{tools: []}), do: agent_tools

  defp tools(%{tools: agent_tools}, %{tools: run_tools}) do
    agent_names = MapSet.new(agent_tools, & &1.name)

    case Enum.find(run_tools, &MapSet.member?(agent_names, &1.name)) do
      nil ->
        agent_tools ++ run_tools

      %Tool{name: name} ->
        raise ArgumentError,
              "the run's tools and the agent's both have a tool named #{inspect(name)}"
    end
  end

  @doc """
  Waits for the result of a run started with `run/3`.

  With the default `timeout` of `:infinity` it waits as long as the run may
  take (its own `:timeout`). With a shorter one, a run that has not finished
  by then is cancelled and `{:error, %SynapseCore.Error{kind: :timeout}}` is
  returned, its details carrying what the run had done (`:messages`,
  `:usage`), as for the run's own timeout. Only the process that started
  the run may await it. A run cancelled by another process (`cancel/1`)
  returns `{:error, %SynapseCore.Error{kind: :cancelled}}`, with the same
  details. A run streamed with `:stream_to` is not awaited: its result is
  its last event, and `await/2` raises `ArgumentError` for it. A run answers
  once: awaiting it again after its answer was taken (by `await/2`,
  `yield/2` or the owner's own `cancel/1`) raises `ArgumentError` too,
  rather than wait for nothing.
  """
  @spec await(Run.t(), timeout()) :: {:ok, Result.t()} | {:error, Error.t()}
  def await(%Run{} = run, timeout \\ :infinity), do: Run.await(run, timeout)

  @doc """
  Waits up to `timeout` milliseconds for a run's result. Returns `nil` if
  the run has not finished by then; the run goes on, and can be yielded or
  awaited again. Only the process that started the run may yield it, and
  not a run streamed with `:stream_to` nor one whose answer was taken
  already (`ArgumentError`, as for `await/2`).
  """
  @spec yield(Run.t(), timeout()) :: {:ok, Result.t()} | {:error, Error.t()} | nil
  def yield(%Run{} = run, timeout \\ 5_000), do: Run.yield(run, timeout)

  @doc """
  Cancels a run: the pydantic-ai run is cancelled in Python, as its
  `CancellationToken` does, and answers with what it had done (an error of
  kind `:cancelled` whose details carry `:messages` and `:usage`), which the
  process awaiting or receiving the run gets. A run that already finished
  is left as it is. Returns `:ok`.

  When called by the process that receives the run's messages, any message
  of the run still in its mailbox is removed (that final error included),
  so nothing arrives afterwards; to keep what a run did, let `await/2`
  give up on it, or cancel it from another process.
  """
  @spec cancel(Run.t()) :: :ok
  def cancel(%Run{} = run), do: Run.cancel(run)

  @doc """
  Approves a call a run's `:approver` was asked about (a
  `SynapseCore.Approval`), from any process on any connected node: the
  tool runs, with `args` (a map) instead of the model's arguments when
  given. Returns once the run has the decision.

  Returns `{:error, %SynapseCore.Error{kind: :invalid_argument}}`, and the
  request stays as it was, for arguments that are not a map or have no
  JSON form, or when the request cannot be decided any more:
  `details.reason` is `:already_settled` (decided by someone else, or
  denied by its `:approval_timeout`), `:run_ended` (the run is over) or
  `:unknown_request`. `{:error, %SynapseCore.Error{kind: :timeout}}` when
  the run's node does not answer in time.

  ## Options

  #{SynapseCore.Options.docs(SynapseCore.Approval.decide_schema())}
  """
  @spec approve(SynapseCore.Approval.t(), map() | nil, keyword()) :: :ok | {:error, Error.t()}
  def approve(approval, args \\ nil, opts \\ [])
  def approve(approval, nil, opts), do: SynapseCore.Approval.decide(approval, :approve, opts)

  def approve(approval, args, opts),
    do: SynapseCore.Approval.decide(approval, {:approve, args}, opts)

  @doc """
  Denies a call a run's `:approver` was asked about: the tool does not run,
  and the model is told `message` (pydantic-ai's default message when
  `nil`). Answers as `approve/3` does.
  """
  @spec deny(SynapseCore.Approval.t(), String.t() | nil, keyword()) :: :ok | {:error, Error.t()}
  def deny(approval, message \\ nil, opts \\ [])
  def deny(approval, nil, opts), do: SynapseCore.Approval.decide(approval, :deny, opts)

  def deny(approval, message, opts),
    do: SynapseCore.Approval.decide(approval, {:deny, message}, opts)

  @doc """
  Runs the agent on `prompt` and streams its events.

  Returns a lazy `Stream`: the run starts when the stream is enumerated, in
  the enumerating process. Its events are pydantic-ai's stream events as
  Elixir terms, in the order pydantic-ai emits them (`SynapseCore.Event`
  lists them all), of the kinds the `:events` option names; by default:

    * `{:text_delta, text}` - a piece of the model's text, in order. The text
      of every model response of the run is streamed: when the run has one
      model response and text output, the deltas concatenate to the output;
    * `{:tool_call, %{id: id, name: name, args: args, args_valid: valid?}}` -
      the model called a tool (one of the agent's Python tools or an Elixir
      tool);
    * `{:tool_result, %{id: id, name: name, content: content, retry: retry?,
      outcome: outcome}}` - that call's outcome: its return value, or
      (`retry: true`) the retry prompt the model got back. It follows its
      `:tool_call`;
    * `{:result, %SynapseCore.Result{}}` - always the last event.

  `SynapseCore.StreamState` folds events into the message being written
  (text, thinking, tool calls, output so far).

  A failed run raises `SynapseCore.Error` from the stream (after any events
  that came before the failure). Halting the stream early (`Enum.take/2`,
  `Stream.take_while/2`, an exception in the consumer) cancels the run, in
  Python too.

      SynapseCore.Agent.run_stream(:support, "Tell me a story")
      |> Enum.each(fn
        {:text_delta, text} -> IO.write(text)
        {:result, result} -> IO.puts("\\n\#{result.usage.output_tokens} tokens")
      end)

  ## Options

  Those of `run_sync/3` (`:timeout` bounds the whole run), and:

  #{SynapseCore.Options.docs(Options.stream_schema())}
  """
  @spec run_stream(name(), Prompt.t(), [run_option() | stream_option()]) ::
          Enumerable.t() | {:ok, Run.t()} | {:error, Error.t()}
  def run_stream(name, prompt, opts \\ [])
      when is_binary(prompt) or is_list(prompt) or is_nil(prompt) do
    options = Options.stream!(opts)

    case options.stream_to do
      nil ->
        event_stream(name, prompt, options)

      {:fan_out, subscribers} ->
        SynapseCore.FanOut.start(subscribers, options.window, fn hub ->
          start_stream(name, prompt, options, hub)
        end)

      receiver ->
        start_stream(name, prompt, options, receiver)
    end
  end

  @doc """
  Acknowledges `count` events of a run streamed with `:stream_to`, letting
  the run send that many more. Call it from the receiver as it handles
  events.
  """
  @spec ack(Run.t(), pos_integer()) :: :ok
  def ack(%Run{} = run, count \\ 1) when is_integer(count) and count > 0 do
    Run.ack(run, count)
  end

  @doc """
  The workers currently ready to serve `name`: their `SynapseCore.Worker`
  pid, OS pid, address, lane (the socket calls take to a local worker, `nil`
  when they take gRPC), location and stuck threads (see
  `SynapseCore.Worker.info/1`).
  """
  @spec workers(name()) :: [
          %{
            pid: pid(),
            os_pid: pos_integer() | nil,
            address: String.t(),
            lane: String.t() | nil,
            location: SynapseCore.Worker.location(),
            stuck_threads: non_neg_integer() | nil
          }
        ]
  def workers(name) do
    Workers.list(name)
  end

  # Histories given as lists past this many messages are converted to JSON
  # on a dirty scheduler: it can take longer than a normal scheduler slot
  # should. A SynapseCore.Messages is copied as it is, on a dirty scheduler
  # only when it is large.
  @dirty_history_length 16
  @dirty_history_bytes 256 * 1024

  defp large?(nil), do: false
  defp large?(%Messages{json: json}), do: byte_size(json) > @dirty_history_bytes
  defp large?(history), do: length(history) > @dirty_history_length

  # A prompt whose binaries are large is copied into the request on a
  # dirty scheduler, as a large history is.
  defp large_prompt?(nil), do: false
  defp large_prompt?(prompt) when is_binary(prompt), do: byte_size(prompt) > @dirty_history_bytes

  defp large_prompt?(parts) do
    Enum.reduce_while(parts, 0, fn
      {:binary, data, _, _}, size -> sized(size + byte_size(data))
      {:binary, data, _}, size -> sized(size + byte_size(data))
      text, size when is_binary(text) -> sized(size + byte_size(text))
      _, size -> {:cont, size}
    end) == :large
  end

  defp sized(size) when size > @dirty_history_bytes, do: {:halt, :large}
  defp sized(size), do: {:cont, size}

  defp request(name, prompt, call, tools, quiet) do
    {text, parts} = Prompt.wire(prompt)

    %{
      # The id the worker hosts the agent under: its name, in Python's logs too.
      agent_id: Worker.agent_id(name),
      prompt: text,
      prompt_parts: parts,
      message_history: history(call.message_history),
      model_settings: call.model_settings,
      usage_limits: call.usage_limits,
      tools: tools,
      quiet: quiet,
      deps: call.deps,
      output_tool_return_content: call.output_tool_return_content,
      messages: call.messages,
      trace_context: call.trace_context || %{},
      deferred_tool_results: call.deferred_tool_results,
      inline_approvals: call.approver != nil,
      events: call |> Map.get(:events, []) |> SynapseCore.Event.wire_names()
    }
  end

  # pydantic-ai's JSON goes to the worker as it is: the NIF sends a binary
  # untouched and encodes a list of maps.
  defp history(%Messages{json: json}), do: json
  defp history(other), do: other

  defp check_prompt(prompt), do: Prompt.validate(prompt)

  ## Streams

  defp start_stream(name, prompt, options, receiver) do
    start(name, prompt, options.call, :stream, receiver, options.window, true)
  end

  defp event_stream(name, prompt, options) do
    start = fn -> start(name, prompt, options.call, :stream, self(), options.window) end
    Run.stream(start, options.window, :emit)
  end
end
