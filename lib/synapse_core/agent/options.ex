defmodule SynapseCore.Agent.Options do
  @moduledoc false
  # The option sets of agents, bridges and runs, each declared once (type,
  # range, default, doc) as a `SynapseCore.Options` schema: the same
  # declaration validates a caller's options and writes the option lists of
  # `SynapseCore.Agent` and `SynapseCore.Bridge` docs. Everything is checked
  # here, in Elixir, before it reaches a worker or the NIF.

  alias SynapseCore.Options

  @enforce_keys [:name, :source]
  defstruct [
    :name,
    :source,
    :model,
    :python,
    :cwd,
    :deps_factory,
    :workers,
    :remote,
    :tls,
    :token,
    :tools,
    :tool_definitions,
    :python_path,
    :env,
    :startup_timeout,
    :shutdown_timeout,
    :health_interval,
    :health_timeout,
    :max_backoff,
    :max_message_bytes,
    :log_level,
    :await_ready,
    :max_stuck_threads,
    :busy_wait_us,
    :transport
  ]

  @type source ::
          {:bridge, String.t()}
          | {:ref, String.t()}
          | {:spec,
             %{
               model: String.t(),
               instructions: String.t(),
               output_schema: map() | nil,
               fields: map() | nil,
               file_text: String.t(),
               file_format: String.t(),
               file_path: String.t()
             }}

  @type t :: %__MODULE__{
          name: term(),
          source: source(),
          model: String.t() | nil,
          python: String.t() | nil,
          cwd: String.t() | nil,
          deps_factory: String.t() | nil,
          workers: non_neg_integer(),
          remote: [String.t()],
          tls: [ca_pem: binary(), server_name: String.t() | nil] | nil,
          token: (() -> String.t()) | nil,
          tools: [SynapseCore.Tool.t()],
          tool_definitions: [map()],
          python_path: [SynapseCore.Python.path_entry()],
          env: SynapseCore.Python.env_option(),
          startup_timeout: pos_integer(),
          shutdown_timeout: non_neg_integer(),
          health_interval: pos_integer() | :infinity,
          health_timeout: pos_integer(),
          max_backoff: pos_integer(),
          max_message_bytes: pos_integer(),
          log_level: SynapseCore.Worker.log_level(),
          await_ready: boolean(),
          max_stuck_threads: non_neg_integer(),
          busy_wait_us: non_neg_integer(),
          transport: :lane | :grpc
        }

  @max_workers 256

  # A remote worker's address after "tcp://": a host (a bracketed IPv6
  # address, or a name or IPv4 address) and a port.
  @remote_address ~r/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$/
  # grpcio takes the limit as a C int; the lane's frame length is a u32.
  @max_message_bytes 2_147_483_647
  @external_resource SynapseCore.Proto.path()
  @default_max_message_bytes SynapseCore.Proto.enum_value(
                               "Limit",
                               "LIMIT_DEFAULT_MAX_MESSAGE_BYTES"
                             )
  @default_busy_wait_us SynapseCore.Proto.enum_value("Limit", "LIMIT_DEFAULT_BUSY_WAIT_US")
  @max_busy_wait_us SynapseCore.Proto.enum_value("Limit", "LIMIT_MAX_BUSY_WAIT_US")

  # What a lane's connection holds back at least before it refuses new
  # calls (see `:transport`).
  @lane_backlog_floor_bytes SynapseCore.Proto.enum_value(
                              "Limit",
                              "LIMIT_LANE_BACKLOG_FLOOR_BYTES"
                            )

  @doc "The default of `:max_message_bytes` (the wire contract's `Limit`)."
  @spec default_max_message_bytes() :: pos_integer()
  def default_max_message_bytes, do: @default_max_message_bytes

  @tls_schema [
    ca: [
      type:
        {:custom, &__MODULE__.cast_ca/1, "a PEM file path or {:pem, pem} (the CA certificates)"},
      required: true,
      # Not shown in errors: a private key given here by mistake would be.
      secret: true,
      doc: """
      the CA certificates the worker's certificate must chain to. Each
      must parse as an X.509 certificate, and a private key in the file is
      refused; anything else around them (comments, CRLs) is left out.
      """
    ],
    server_name: [
      type: {:custom, &__MODULE__.cast_server_name/1, "a DNS name or an IP address"},
      doc: "the name the worker's certificate must be valid for; defaults to the host."
    ]
  ]

  # Options every worker has, agent or bridge.
  @worker_schema [
    name: [
      type: :any,
      required: true,
      doc: "the name every call uses: any term, unique among agents and bridges."
    ],
    workers: [
      type: {:integer, 0, @max_workers},
      default: 1,
      doc: "the number of Python processes serving it (0 only with `:remote` workers)."
    ],
    python: [
      type: :os_string,
      doc: "the Python interpreter; see `SynapseCore.Python` for the default."
    ],
    python_path: [
      type:
        {:list,
         {:custom, &SynapseCore.Python.cast_path_entry/1,
          "a path, or {app, path} for a path inside an OTP application"}},
      default: [],
      doc_type: "a list of paths and `{app, path}` tuples",
      doc: """
      directories prepended to the worker's `PYTHONPATH`, where the
      Python modules are found. Relative paths are expanded against the
      current directory when the options are validated; `{app, path}`
      (such as `{:my_app, "priv/python"}`) is `path` inside the OTP
      application `app` wherever it is installed, resolved when each
      worker starts (see `SynapseCore.Python`).
      """
    ],
    env: [
      type:
        {:custom, &__MODULE__.cast_env/1,
         ~s|a list (or map) of {"NAME", "value"} pairs and "NAME"s|},
      default: [],
      secret: true,
      doc: """
      environment variables for the worker: `{"NAME", "value"}` pairs,
      or `"NAME"` to pass the BEAM's own value through. Workers do not
      inherit the BEAM's environment otherwise; see `SynapseCore.Python`.
      """
    ],
    cwd: [type: :os_string, doc: "the worker's working directory; defaults to the BEAM's."],
    startup_timeout: [
      type: {:integer, 1, Options.max_ms()},
      default: 30_000,
      doc: """
      milliseconds a worker has to start, import the agent and be ready.
      A worker that misses it fails its start with `:startup_failed`: with
      `await_ready: true`, `start_link/1` returns that error (in a
      supervision tree, the application does not start); with
      `await_ready: false`, see that option.
      """
    ],
    shutdown_timeout: [
      type: {:integer, 0, Options.max_ms()},
      default: 5_000,
      doc: """
      milliseconds a stopping worker has between SIGTERM and SIGKILL; the
      worker gives its calls in flight most of it to finish.
      """
    ],
    await_ready: [
      type: :boolean,
      default: true,
      doc: """
      whether `start_link/1` waits for the workers' first start (`true`) or
      returns as soon as the processes exist (`false`): then the workers
      start in the background, the agents of a supervision tree start in
      parallel, and calls get `:unavailable` until a worker serves.
      `SynapseCore.AwaitReady` (a child placed after the agents) or
      `SynapseCore.await_ready/2` waits for them, failing with the first
      worker that cannot start. A worker whose first start fails for good
      answers every call with that error.
      """
    ],
    log_level: [
      type: {:in, SynapseCore.Worker.log_levels()},
      doc: """
      the level of Python's logging in the workers: records below it are
      not even written. Each record becomes one Logger entry, at its level,
      with its traceback in the message and `:agent`, `:worker`,
      `:worker_os_pid` and `:python_logger` in the metadata; each line of
      `print()` output one entry at `:info`. A worker's entries are rate
      limited (#{SynapseCore.Shepherd.Log.rate()} a second, with a summary of
      what was dropped). Defaults to the application environment's
      `:python_log_level` (`config :synapse_core, python_log_level: :debug`),
      else `:info`.
      """
    ],
    max_stuck_threads: [
      type: {:integer, 0, Options.max_int32()},
      default: 10,
      doc: """
      how many threads of sync Python tools or Bridge functions may still
      run after their call ended (timed out, cancelled: Python cannot stop a
      thread) before the
      worker reports itself unhealthy and is replaced, once its calls in
      flight are done. `SynapseCore.Agent.workers/1` shows the count.
      """
    ],
    busy_wait_us: [
      type: {:integer, 0, @max_busy_wait_us},
      default: @default_busy_wait_us,
      doc: """
      for how many microseconds the event loop of a worker started here,
      and the thread reading its lane's connection of sync Bridge calls,
      poll for the next call before they sleep (`0`: they sleep at once, as
      asyncio's loop does; a remote worker takes it from its environment's
      `SYNAPSE_BUSY_WAIT_US`).
      Waking a sleeping process costs both sides more than a short call
      itself on many machines, virtual ones most: polling saves that when
      calls come back to back. The loop polls only once a wait has ended
      within this time, stops after three polls in a row found nothing (an
      idle worker spends nothing), and never while it works more than it
      waits (many calls in flight) or a sync tool or Bridge function runs
      in one of its threads; it spends at most this long per wait. Set it
      to `0` where a CPU quota counts every microsecond (containers).
      """
    ],
    health_interval: [
      type: {:timeout, 1},
      default: 5_000,
      doc: """
      milliseconds between two health checks of a serving worker
      (`:infinity`: none). A worker that fails two in a row is killed and
      replaced.
      """
    ],
    health_timeout: [
      type: {:integer, 1, Options.max_ms()},
      default: 5_000,
      doc: "milliseconds a health check may take before it counts as failed."
    ],
    max_backoff: [
      type: {:integer, 1, Options.max_ms()},
      default: 30_000,
      doc: """
      the longest wait, in milliseconds, before a lost worker is started
      again (the wait starts at 100 ms and doubles at each failed start).
      """
    ],
    max_message_bytes: [
      type: {:integer, 1024, @max_message_bytes},
      default: @default_max_message_bytes,
      doc: """
      the largest message, in bytes, either way between the BEAM and a
      worker. Larger requests are refused before they are sent, larger
      replies fail the call; both with `:resource_exhausted`. A failed
      run whose messages would make its error larger keeps its own error,
      without them (`SynapseCore.Error`).
      """
    ],
    transport: [
      type: {:in, [:lane, :grpc]},
      default: :lane,
      doc: """
      how calls reach the workers started here. `:lane`: a second private
      Unix socket of each worker carrying the same calls as its gRPC
      services with far less work per call (one length-prefixed frame each
      way for a unary call). `:grpc`: one gRPC call per call, as remote
      workers are always reached. Both carry the same messages with the
      same deadlines, cancellation, back-pressure, size limit and errors;
      but where HTTP/2's flow control holds back the requests of a worker
      that does not read them (its event loop blocked), the lane holds back
      at most the larger of `:max_message_bytes` and
      #{div(@lane_backlog_floor_bytes, 1024 * 1024)} MiB per connection,
      and refuses later calls at once with `:unavailable` until the worker
      reads again or is replaced.
      """
    ],
    remote: [
      type: {:list, {:custom, &__MODULE__.cast_remote/1, ~s(an address "tcp://host:port")}},
      default: [],
      doc_type: ~s(a list of "tcp://host:port" addresses),
      doc: """
      workers started elsewhere (`python -m synapse_python.worker --listen
      tcp://...`) to attach, next to the `:workers` started here, each
      address once (however spelled: host names are compared without case,
      IP addresses and ports as numbers). They are reached over TLS with a
      bearer token: `:tls` and `:token` are required.
      """
    ],
    tls: [
      type: {:keyword, @tls_schema},
      doc_type: "a keyword list: `:ca` (required) and `:server_name`",
      doc: """
      for `:remote` workers: `ca:` the CA certificates, as a PEM file path
      or `{:pem, pem}` (each must parse as an X.509 certificate; a private
      key in it is refused); `server_name:` the name their certificate is
      valid for (defaults to the host).
      """
    ],
    token: [
      type:
        {:custom, &__MODULE__.cast_token/1,
         ~s(a string of visible ASCII, {:system, "VAR"} or a function of arity 0)},
      secret: true,
      doc: """
      for `:remote` workers: the bearer token they require, as a string,
      `{:system, "VAR"}` (read now, without its surrounding whitespace, as
      the worker reads `SYNAPSE_WORKER_TOKEN`) or a function returning it (called at
      each connection). It stays in a closure and in Rust: no term, log,
      error or crash report shows it.
      """
    ]
  ]

  @agent_schema [
    agent: [
      type: {:custom, &__MODULE__.cast_reference/1, ~s(a string "package.module:attribute")},
      doc: """
      the pydantic-ai agent, as `"package.module:attribute"`: a
      `pydantic_ai.Agent`, or a zero-argument function returning one.
      """
    ],
    model: [
      type: :non_empty_string,
      doc: """
      any pydantic-ai model string (`"openai:gpt-4o"`,
      `"anthropic:claude-sonnet-4-5"`, `"test"` for pydantic-ai's offline
      `TestModel`, ...). With `:agent`, it overrides the agent's own model:
      it is resolved once, when the worker loads the agent (so a typo or a
      missing key fails the start), and that model is given to every run,
      as a Python server passing `model=` would. Without `:agent`, the
      agent is defined from Elixir (see "Agents defined from Elixir" in the
      module documentation) and `:model` is its model, required unless a
      `:spec` file names one.
      """
    ],
    instructions: [
      type: :string,
      doc: """
      for an agent defined from Elixir: its instructions (system prompt),
      added after a `:spec` file's.
      """
    ],
    output_schema: [
      type: {:json, :map},
      doc: """
      for an agent defined from Elixir: a JSON Schema (a map,
      `"type" => "object"`) for structured output. The model's output is
      validated against it in Python, and the model is asked to retry when
      it does not conform; results arrive as maps with string keys (see
      `SynapseCore.Result`). The supported keywords are those of JSON Schema
      validation for types, properties, `required`, `additionalProperties`,
      `items`, `enum`, `const`, bounds, lengths, `pattern` and `anyOf`.
      """
    ],
    spec: [
      type:
        {:custom, &__MODULE__.cast_spec_file/1,
         ~s|a path or {app, path} of a ".yaml", ".yml" or ".json" file|},
      doc: """
      for an agent defined from Elixir: a pydantic-ai agent spec file (its
      declarative `AgentSpec`, as `Agent.from_file` reads it), e.g.
      `{:my_app, "priv/agents/support.yaml"}` (a path inside the OTP
      application, wherever it is installed) or a path. The file is read
      when the options are validated and sent to every worker (remote ones
      too). The options below (`:model`, `:instructions`,
      `:model_settings`, `:capabilities`, ...) supplement it as
      `Agent.from_spec`'s arguments do: `:instructions` and `:capabilities`
      are added after the file's, `:model_settings` merged over the
      file's, `:retries` replace the file's budgets they name (`[tools: 1]`
      keeps the file's output retries), the others replace the file's. With `:spec`, `:model` may
      come from the file. See "Agents defined from Elixir" in the module
      documentation.
      """
    ],
    model_settings: [
      type: {:json, :keyword_or_map},
      doc: """
      for an agent defined from Elixir: the agent's pydantic-ai model
      settings (`[temperature: 0.2, max_tokens: 500]`), under the run's
      own `:model_settings`.
      """
    ],
    retries: [
      type:
        {:or,
         [
           {:integer, 0, Options.max_int32()},
           {:keyword,
            [
              tools: [type: {:integer, 0, Options.max_int32()}, doc: false],
              output: [type: {:integer, 0, Options.max_int32()}, doc: false]
            ]}
         ]},
      doc_type: "a non-negative integer, or a keyword list of `:tools` and `:output`",
      doc: """
      for an agent defined from Elixir: pydantic-ai's `retries`, the
      retries the model gets for a failing tool call and for output that
      does not validate (an integer for both, or `[tools: 2, output: 3]`).
      pydantic-ai's default is 1.
      """
    ],
    capabilities: [
      type:
        {:list,
         {:custom, &__MODULE__.cast_capability/1,
          ~s|a capability: "Name", {"Name", arguments} or %{"Name" => arguments}|}},
      doc_type: ~s|a list of capabilities: "Name", {"Name", arguments} or %{"Name" => arguments}|,
      doc: """
      for an agent defined from Elixir: pydantic-ai capabilities, by the
      names its agent spec knows (`"MCP"`, `"WebSearch"`, `"Thinking"`,
      `"PrefixTools"`, ...), with their arguments as a keyword list or map
      (keyword arguments) or any other value (one positional argument):
      `{"MCP", url: "https://mcp.example.com/mcp", tool_prefix: "docs"}`
      connects the agent to an MCP server, whose tools the model may call.
      A secret argument is best given as `{:system, "VAR"}`
      (`authorization_token: {:system, "DOCS_MCP_TOKEN"}`, with
      `env: ["DOCS_MCP_TOKEN"]`): the worker reads it from its own
      environment, so that no term, log or crash report holds it.
      An unknown name, or arguments the capability refuses, fails the start
      (see "Agents defined from Elixir").
      """
    ],
    end_strategy: [
      type: {:in, [:early, :graceful, :exhaustive]},
      doc: """
      for an agent defined from Elixir: pydantic-ai's `end_strategy`, what
      happens to the other tool calls of a response that has the final
      output. pydantic-ai's default is `:graceful`.
      """
    ],
    tool_timeout: [
      type: {:integer, 1, Options.max_ms()},
      doc: """
      for an agent defined from Elixir: milliseconds each tool call may
      take by default (pydantic-ai's `tool_timeout`).
      """
    ],
    description: [
      type: :string,
      doc: "for an agent defined from Elixir: pydantic-ai's agent `description`."
    ],
    metadata: [
      type: {:json, :map},
      doc: """
      for an agent defined from Elixir: pydantic-ai's agent `metadata`, a
      map of JSON data kept with each run.
      """
    ],
    tools: [
      type: {:custom, &__MODULE__.cast_tools/1, "a list of tools and modules of tools"},
      default: [],
      doc_default: "[]",
      doc: """
      tools written in Elixir that the model may call in every run of this
      agent, alongside the Python agent's own: `SynapseCore.Tool` structs
      and modules that `use SynapseCore.Tools`.
      """
    ],
    deps_factory: [
      type: {:custom, &__MODULE__.cast_reference/1, ~s(a string "package.module:function")},
      doc: """
      `"package.module:function"`: the Python function that makes each
      run's deps from the run's `:deps` data (see "Deps" in the module
      documentation). Without it, the data is validated into the agent's
      `deps_type`. A factory that cannot be imported fails the start.
      """
    ]
  ]

  @bridge_schema [
    module: [
      type: {:custom, &__MODULE__.cast_module/1, "the name of a Python module"},
      required: true,
      doc: """
      the Python module the bridge was generated from. Its generated server
      (`synapse_bridge_<module>.py`) and the module itself must be on the
      worker's `PYTHONPATH` (see `:python_path`).
      """
    ]
  ]

  @call_schema [
    message_history: [
      type:
        {:custom, &__MODULE__.cast_history/1,
         "a previous result's `messages` (a SynapseCore.Messages), a result, or a list of message maps"},
      default: nil,
      doc: """
      the conversation so far: a previous result's `messages` (a
      `SynapseCore.Messages`, sent back byte for byte as pydantic-ai wrote
      it), or the result itself. A list of message maps (pydantic-ai's JSON
      form as Elixir data, e.g. from `SynapseCore.Messages.decode/1`) is
      accepted too, but it is re-encoded (keys sorted), so the model does
      not receive the exact bytes Python would send. Defaults to none.
      """
    ],
    output_tool_return_content: [
      type: :string,
      default: nil,
      doc: """
      pydantic-ai's parameter of that name: for an agent whose output came
      from an output tool, the content of that tool's return in the
      result's `messages`, to continue the conversation from it. An agent
      with text output fails the run with `:invalid_argument`.
      """
    ],
    messages: [
      type: :boolean,
      default: true,
      doc: """
      whether the result carries the conversation (`SynapseCore.Result`'s
      `messages`, to continue it). With `false` its `messages` is `nil`, and
      the worker does not write the messages' JSON, which is most of what
      handing back a short run costs beyond pydantic-ai's own work (a few
      percent of a `TestModel` run); such a result cannot be given as
      `:message_history`, and `:output_tool_return_content` is refused.
      A failed run's error keeps what the run did either way
      (`SynapseCore.Error`).
      """
    ],
    model_settings: [
      type: :keyword_or_map,
      default: nil,
      doc: """
      pydantic-ai model settings for this run, e.g.
      `[temperature: 0.2, max_tokens: 200]`.
      """
    ],
    usage_limits: [
      type: :keyword_or_map,
      default: nil,
      doc: """
      pydantic-ai usage limits for this run (its `UsageLimits`), e.g.
      `[request_limit: 3, tool_calls_limit: 5, cost_limit: "0.05"]`. Every
      field of the installed pydantic-ai's `UsageLimits` is accepted, and
      only those: in pydantic-ai 2.68 `request_limit` (defaults to 50; `nil`
      lifts it), `tool_calls_limit`, `input_tokens_limit`,
      `output_tokens_limit`, `total_tokens_limit`,
      `per_request_input_tokens_limit` (integers), `cost_limit` (USD, a
      number or a decimal string, compared with `SynapseCore.Usage`'s
      `cost`; a model genai-prices cannot price has no cost to limit) and
      `count_tokens_before_request` (a boolean). Exceeding one fails the
      run with `:usage_limit_exceeded` and pydantic-ai's message; an unknown
      field, or a value of the wrong type, fails it with `:invalid_argument`
      naming the field.
      """
    ],
    timeout: [
      type: {:timeout, 1},
      default: 60_000,
      doc: """
      milliseconds the run may take. It is pydantic-ai's own `timeout`:
      when it passes, the run stops in Python and the call returns
      `{:error, %SynapseCore.Error{kind: :timeout}}` whose details carry
      what the run had done (`:messages`, to resume from, and `:usage`).
      The call's transport deadline (gRPC's or the lane's) is a little longer, so that this
      answer arrives; a worker that cannot answer (its event loop blocked)
      is given up on then.
      """
    ],
    tools: [
      type: {:custom, &__MODULE__.cast_tools/1, "a list of tools and modules of tools"},
      default: [],
      doc_default: "[]",
      doc: """
      tools for this run only (`SynapseCore.Tool` structs or modules that
      `use SynapseCore.Tools`), in addition to the agent's.
      """
    ],
    trace_context: [
      type:
        {:custom, &SynapseCore.TraceContext.cast/1,
         "a map of trace context headers (\"traceparent\", ...)"},
      default: nil,
      doc: """
      the trace the run's spans in Python join: headers such as W3C
      `traceparent` and `tracestate`. By default, the calling process's
      current OpenTelemetry context, when the application has
      OpenTelemetry; `%{}` for none. See `SynapseCore.TraceContext`.
      """
    ],
    deps: [
      type: :any,
      default: nil,
      doc: """
      the run's dependencies: data that becomes the Python agent's
      `ctx.deps` (validated into its `deps_type`, or given to its deps
      factory; see "Deps" in the module documentation), and any term for
      the run's Elixir tools, which get it unconverted in their
      `SynapseCore.Tool.Context`.
      """
    ],
    deferred_tool_results: [
      type:
        {:custom, &SynapseCore.DeferredToolResults.cast/1,
         "a map of :approvals, :calls and :metadata"},
      default: nil,
      doc: """
      pydantic-ai's `deferred_tool_results`: the decisions on the calls a
      previous run ended with (its output a
      `SynapseCore.DeferredToolRequests`), whose result is this run's
      `:message_history`. See `SynapseCore.DeferredToolResults`.
      """
    ],
    approver: [
      type:
        {:custom, &SynapseCore.Approval.cast_approver/1,
         SynapseCore.Approval.approver_description()},
      default: nil,
      doc: """
      who decides, during the run, on the tool calls that need approval:
      a pid (on any node), a registered name, `{name, node}`,
      `{:global, name}`, `{:via, module, name}`, or `{:pg, group}` /
      `{:pg, scope, group}` (every member gets each request; the first
      decision wins). It receives a `SynapseCore.Approval` per call and
      answers with `approve/3` or `deny/3`; the run waits meanwhile. A call
      nobody can receive is denied, and so is one whose every recipient
      exits before deciding. Without an approver, such calls end
      the run (see "Human in the loop").
      """
    ],
    approval_timeout: [
      type: {:timeout, 1},
      default: :infinity,
      doc: """
      milliseconds an approval request may wait for its decision before
      it is denied (the model is told so). Whatever it is, the run's
      `:timeout` bounds the wait.
      """
    ]
  ]

  @stream_schema [
    events: [
      type:
        {:custom, &__MODULE__.cast_event_kinds/1, "`:all` or a non-empty list of event kinds"},
      default: SynapseCore.Event.default_kinds(),
      doc: """
      the kinds of events to receive (see `SynapseCore.Event`): `:all`, or a
      list such as `[:text_delta, :thinking_delta, :tool_call_delta]`.
      Events of other kinds are not even sent by the worker. `:output`
      events (the output validated as it grows) make the worker validate
      the output at each delta, as pydantic-ai's `stream_output` does.
      """
    ],
    window: [
      type: {:or, [{:integer, 1, Options.max_int32()}, {:in, [:infinity]}]},
      default: 64,
      doc: """
      back-pressure: at most this many events are sent ahead of the
      consumer. A consumer slower than the model never has more than
      `window` events of the run in its mailbox (plus the final one); the
      worker is slowed down instead, by flow control (gRPC's, or the
      lane's credit).
      """
    ],
    stream_to: [
      type: {:custom, &SynapseCore.FanOut.cast_stream_to/1, SynapseCore.FanOut.description()},
      default: nil,
      doc: """
      a pid to deliver the events to as messages, for processes that relay
      them (a socket, a LiveView). `run_stream/3` then starts the run at
      once and returns `{:ok, %SynapseCore.Run{}}`; the pid receives
      `{:synapse_event, run.ref, event}` for each event, ending with
      `{:synapse_event, run.ref, {:result, result}}` or
      `{:synapse_event, run.ref, {:error, %SynapseCore.Error{}}}`. It must
      call `ack/2` for the events it has handled, or only `window` events
      arrive. The run is cancelled if the caller or the receiver exits.

      Several subscribers, on any node, get the same events when
      `stream_to` is a list of pids or a `:pg` group (`{:pg, group}` in
      OTP's default scope, `{:pg, scope, group}`; its members when the run
      starts). Each first receives `{:synapse_subscribed, run}`, the run
      it acknowledges events of with `ack/2`. An event counts as handled
      once every subscriber acknowledged it: no subscriber ever has more
      than `window` events waiting, and the slowest sets the run's pace. A
      subscriber that exits is dropped; the run is cancelled when none is
      left.
      """
    ]
  ]

  @bridge_call_schema [
    timeout: [
      type: {:timeout, 1},
      default: 60_000,
      doc: "milliseconds the call may take; it is cancelled in Python when it passes."
    ]
  ]

  @doc "The schema of `SynapseCore.Agent.start_link/1`."
  @spec agent_schema() :: Options.schema()
  def agent_schema,
    do:
      Keyword.take(@worker_schema, [:name]) ++
        @agent_schema ++ Keyword.delete(@worker_schema, :name)

  @doc "The schema of `SynapseCore.Bridge.start_link/1`."
  @spec bridge_schema() :: Options.schema()
  def bridge_schema,
    do:
      Keyword.take(@worker_schema, [:name]) ++
        @bridge_schema ++ Keyword.delete(@worker_schema, :name)

  @doc "The schema of a run (`SynapseCore.Agent.run_sync/3`)."
  @spec call_schema() :: Options.schema()
  def call_schema, do: @call_schema

  @doc "The options a streamed run has beyond a run's."
  @spec stream_schema() :: Options.schema()
  def stream_schema, do: @stream_schema

  @doc "The schema of a unary Bridge call."
  @spec bridge_call_schema() :: Options.schema()
  def bridge_call_schema, do: @bridge_call_schema

  @doc "The schema of a streamed Bridge call."
  @spec bridge_stream_schema() :: Options.schema()
  def bridge_stream_schema, do: @bridge_call_schema ++ Keyword.take(@stream_schema, [:window])

  @doc "The worker options of an agent's, documented once, as a list for a bridge's docs."
  @spec worker_keys() :: [atom()]
  def worker_keys, do: Keyword.keys(@worker_schema) -- [:name]

  ## Start options

  @spec agent!(keyword()) :: t()
  def agent!(opts) do
    options = Options.validate!(opts, agent_schema(), "an agent")

    %{
      worker!(options)
      | source: source!(options),
        model: options[:model],
        tools: options.tools,
        # Made once: every run of the agent sends them as they are.
        tool_definitions: Enum.map(options.tools, &SynapseCore.Tool.definition/1),
        deps_factory: options[:deps_factory]
    }
  end

  @spec bridge!(keyword()) :: t()
  def bridge!(opts) do
    options = Options.validate!(opts, bridge_schema(), "a bridge")
    %{worker!(options) | source: {:bridge, options.module}, tools: []}
  end

  defp worker!(options) do
    remote = options.remote

    if options.workers == 0 and remote == [] do
      raise ArgumentError, "invalid :workers option: it may be 0 only with :remote workers"
    end

    check_distinct_remotes!(remote)

    {tls, token} =
      case {remote, options[:tls], options[:token]} do
        {[], _tls, _token} ->
          {nil, nil}

        {_remote, nil, _token} ->
          raise ArgumentError, ":remote workers need the :tls option (ca: path)"

        {_remote, _tls, nil} ->
          raise ArgumentError,
                ":remote workers need a :token (a string, {:system, \"VAR\"} or a function)"

        {_remote, tls, token} ->
          {[ca_pem: tls.ca, server_name: tls[:server_name]], token}
      end

    %__MODULE__{
      name: options.name,
      source: nil,
      python: options[:python],
      cwd: options[:cwd],
      workers: options.workers,
      remote: remote,
      tls: tls,
      token: token,
      tools: [],
      tool_definitions: [],
      python_path: options.python_path,
      env: options.env,
      startup_timeout: options.startup_timeout,
      shutdown_timeout: options.shutdown_timeout,
      health_interval: options.health_interval,
      health_timeout: options.health_timeout,
      max_backoff: options.max_backoff,
      max_message_bytes: options.max_message_bytes,
      log_level: options[:log_level] || configured_log_level(),
      await_ready: options.await_ready,
      max_stuck_threads: options.max_stuck_threads,
      busy_wait_us: options.busy_wait_us,
      transport: options.transport
    }
  end

  # Each address is one worker of the pool: the same process attached twice
  # would be two workers to the pool, each counting only its own calls in
  # flight, and would get twice its share of calls.
  defp check_distinct_remotes!(remote) do
    Enum.reduce(remote, %{}, fn address, seen ->
      key = remote_key(address)

      case seen do
        %{^key => first} ->
          also = if first == address, do: "", else: " (as #{first})"

          raise ArgumentError,
                "invalid :remote option: #{address} is given twice#{also}; " <>
                  "each address is one worker, attached once"

        %{} ->
          Map.put(seen, key, address)
      end
    end)

    :ok
  end

  # Where an address leads, whatever its spelling: DNS names are not case
  # sensitive, an IP address may be written several ways, a port may have
  # leading zeros.
  defp remote_key("tcp://" <> host_port) do
    [_, host, port] = Regex.run(@remote_address, host_port)
    host = host |> String.trim_leading("[") |> String.trim_trailing("]")

    case :inet.parse_strict_address(String.to_charlist(host)) do
      {:ok, ip} ->
        {ip, String.to_integer(port)}

      {:error, _} ->
        {host |> String.downcase() |> String.trim_trailing("."), String.to_integer(port)}
    end
  end

  defp configured_log_level do
    level = Application.get_env(:synapse_core, :python_log_level, :info)

    unless level in SynapseCore.Worker.log_levels() do
      raise ArgumentError,
            "invalid :python_log_level in the :synapse_core application environment: " <>
              "expected #{Options.describe({:in, SynapseCore.Worker.log_levels()})}, " <>
              "got: #{inspect(level)}"
    end

    level
  end

  # The options that define an agent from Elixir, and the `AgentSpec`
  # fields of pydantic-ai they become (beside :model and :instructions).
  @spec_fields [
    :model_settings,
    :retries,
    :capabilities,
    :end_strategy,
    :tool_timeout,
    :description,
    :metadata
  ]
  @spec_keys [:instructions, :output_schema, :spec | @spec_fields]

  defp source!(options) do
    case {options[:agent], Map.take(options, @spec_keys)} do
      {nil, spec} ->
        file = spec[:spec]

        model =
          options[:model] || if(file, do: "") ||
            raise ArgumentError,
                  "give either :agent (\"module:attribute\" of a pydantic-ai agent), " <>
                    ":model or :spec (to define the agent from Elixir)"

        fields = spec |> Map.take(@spec_fields) |> Map.new(&spec_field/1)

        {:spec,
         %{
           model: model,
           instructions: spec[:instructions] || "",
           output_schema: spec[:output_schema],
           fields: if(fields == %{}, do: nil, else: fields),
           file_text: if(file, do: file.text, else: ""),
           file_format: if(file, do: file.format, else: ""),
           file_path: if(file, do: file.path, else: "")
         }}

      {ref, spec} when spec == %{} ->
        {:ref, ref}

      {_ref, spec} ->
        [key | _] = spec |> Map.keys() |> Enum.sort()

        raise ArgumentError,
              "#{inspect(key)} defines an agent from Elixir and cannot be combined with :agent; " <>
                "set it on the Python agent instead"
    end
  end

  # An option as pydantic-ai's AgentSpec field (JSON data, string keys).
  defp spec_field({:retries, retries}) when is_map(retries),
    do: {"retries", Map.new(retries, fn {key, value} -> {Atom.to_string(key), value} end)}

  defp spec_field({:end_strategy, strategy}), do: {"end_strategy", Atom.to_string(strategy)}
  defp spec_field({:tool_timeout, ms}), do: {"tool_timeout", ms / 1000}
  defp spec_field({key, value}), do: {Atom.to_string(key), value}

  ## Call options

  @typedoc "Validated options of one run."
  @type call :: %{
          # streamed runs only
          optional(:events) => [SynapseCore.Event.kind()],
          message_history: SynapseCore.Messages.t() | [map()] | nil,
          output_tool_return_content: String.t() | nil,
          messages: boolean(),
          model_settings: map() | nil,
          usage_limits: map() | nil,
          timeout: timeout(),
          tools: [SynapseCore.Tool.t()],
          trace_context: %{String.t() => String.t()} | nil,
          deps: term(),
          deferred_tool_results: map() | nil,
          approver: SynapseCore.Approval.approver() | nil,
          approval_timeout: timeout()
        }

  @spec call!(keyword()) :: call()
  def call!(opts), do: opts |> Options.validate!(@call_schema, "a run") |> check_messages!()

  @typedoc "Validated options of a streaming run."
  @type stream :: %{
          call: call(),
          stream_to: pid() | {:fan_out, term()} | nil,
          window: pos_integer() | :infinity
        }

  @spec stream!(keyword()) :: stream()
  def stream!(opts) do
    options =
      opts
      |> Options.validate!(@call_schema ++ @stream_schema, "a streamed run")
      |> check_messages!()

    %{
      call:
        options
        |> Map.take(Keyword.keys(@call_schema))
        |> Map.put(:events, options.events),
      stream_to: options.stream_to,
      window: options.window
    }
  end

  # The content of the output tool's return is written into the messages.
  defp check_messages!(%{messages: false, output_tool_return_content: content})
       when content != nil,
       do:
         raise(
           ArgumentError,
           ":output_tool_return_content sets content in the result's messages, " <>
             "which `messages: false` leaves out"
         )

  defp check_messages!(options), do: options

  ## Casts of the custom types (public for the schemas' captures)

  # The TCP ports a remote worker's address may name.
  @ports 1..65_535

  @doc false
  # A CA that is not certificates (a key file given by mistake, a DER file,
  # a CERTIFICATE block whose content is not one) is refused here: TLS would
  # only fail at the first connection, and not at all while the worker is
  # not up (rustls drops a certificate it cannot parse, and then trusts
  # nothing). The error never quotes the content.
  def cast_ca({:pem, pem}) when is_binary(pem) and pem != "" do
    with {:error, problem} <- certificates(pem), do: {:error, "the PEM #{problem}"}
  end

  def cast_ca(path) when is_binary(path) do
    case File.read(path) do
      {:ok, pem} ->
        with {:error, problem} <- certificates(pem), do: {:error, "#{path} #{problem}"}

      {:error, reason} ->
        {:error, "cannot read #{path}: #{:file.format_error(reason)}"}
    end
  end

  def cast_ca(_other), do: {:error, "expected a PEM file path or {:pem, pem}"}

  @private_keys [
    :RSAPrivateKey,
    :DSAPrivateKey,
    :ECPrivateKey,
    :PrivateKeyInfo,
    :EncryptedPrivateKeyInfo
  ]

  # The certificates of a PEM text, each one parsed as X.509, written again
  # as PEM: what reaches the NIF is what was checked, and nothing else of
  # the text (a private key, which must not sit in a term, is refused).
  defp certificates(pem) do
    entries = :public_key.pem_decode(pem)
    certificates = for {:Certificate, _der, _encryption} = entry <- entries, do: entry

    cond do
      Enum.any?(entries, &(elem(&1, 0) in @private_keys)) ->
        {:error, "holds a private key (not shown): a CA file holds certificates only"}

      certificates == [] ->
        {:error, "holds no PEM certificate"}

      index = Enum.find_index(certificates, &(not x509?(&1))) ->
        {:error,
         "holds a CERTIFICATE block (number #{index + 1}) that is not an X.509 certificate"}

      true ->
        {:ok, :public_key.pem_encode(certificates)}
    end
  rescue
    # A block whose base64 is broken, or that does not end.
    _ -> {:error, "is not valid PEM"}
  end

  defp x509?({:Certificate, der, :not_encrypted}) do
    _ = :public_key.pkix_decode_cert(der, :plain)
    true
  rescue
    _ -> false
  end

  defp x509?(_encrypted), do: false

  # Checked here: TLS takes no other name, and refused one only at the
  # first connection, as "bad TLS settings: transport error".
  @doc false
  def cast_server_name(name) when is_binary(name) do
    if dns_name?(name) or match?({:ok, _}, :inet.parse_strict_address(:binary.bin_to_list(name))),
      do: {:ok, name},
      else: {:error, "expected a DNS name or an IP address"}
  end

  def cast_server_name(_other), do: {:error, "expected a DNS name or an IP address"}

  # Labels of letters, digits, "-" (not at either end) and "_" (which
  # internal names use), with an optional final dot.
  defp dns_name?(name) do
    labels = name |> String.trim_trailing(".") |> String.split(".")

    byte_size(name) in 1..253 and
      Enum.all?(labels, &Regex.match?(~r/^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/, &1))
  end

  @doc false
  def cast_env(env) when is_map(env), do: cast_env(Map.to_list(env))

  def cast_env(env) when is_list(env) do
    # Only the shape is said: the entries may hold a key.
    if List.improper?(env),
      do: {:error, "expected a list or a map, got an improper list"},
      else: cast_env_entries(env)
  end

  def cast_env(_other), do: {:error, "expected a list or a map"}

  defp cast_env_entries(env) do
    case Enum.reject(env, &env_entry?/1) do
      [] ->
        # Values kept in closures, as the token is: an inspected struct or
        # a crash report shows a function, not a key.
        {:ok, Enum.map(env, &hide_value/1)}

      [bad | _] ->
        {:error,
         ~s|expected {"NAME", "value"} pairs or "NAME"s (names without "=", no NUL bytes), | <>
           "got the entry #{show_entry(bad)}"}
    end
  end

  defp hide_value({name, value}), do: {name, fn -> value end}
  defp hide_value(name), do: name

  # A pair's value may be a key: only its name is shown.
  defp show_entry({name, _value}), do: "{#{inspect(name, limit: 5)}, (value not shown)}"

  defp show_entry(name) when is_binary(name) do
    case String.split(name, "=", parts: 2) do
      [name, _value] -> "#{inspect(name <> "=")}(value not shown)"
      [name] -> inspect(name)
    end
  end

  defp show_entry(atom) when is_atom(atom), do: inspect(atom)
  defp show_entry(_other), do: "(neither a pair nor a name; not shown)"

  defp env_entry?({name, value}), do: env_name?(name) and os_text?(value)
  defp env_entry?(name), do: env_name?(name)

  defp env_name?(name),
    do: Options.cast(:os_string, name) == {:ok, name} and not String.contains?(name, "=")

  defp os_text?(value),
    do: is_binary(value) and String.valid?(value) and not String.contains?(value, <<0>>)

  @doc false
  # Checked here, as the worker's `--listen` is: the channel would take
  # no port as HTTPS's 443 and a path or a port beyond 65535 as
  # unreachable, and retry such an address forever as `:unavailable`.
  def cast_remote("tcp://" <> host_port = address) do
    case Regex.run(@remote_address, host_port) do
      [_, _host, port] ->
        if String.to_integer(port) in @ports,
          do: {:ok, address},
          else: {:error, "expected a port #{ports_text()}"}

      _other ->
        {:error, ~s(expected addresses like "tcp://host:port", with a port #{ports_text()})}
    end
  end

  def cast_remote(_other), do: {:error, ~s(expected addresses like "tcp://host:port")}

  defp ports_text, do: "from #{@ports.first} to #{@ports.last}"

  # The token: never shown. `{:system, var}` is read now; a string is kept
  # in a closure, so that an inspected struct or a crash report shows a
  # function, not the token.
  @doc false
  def cast_token(token) when is_binary(token) do
    if header_text?(token),
      do: {:ok, fn -> token end},
      else: {:error, "expected a non-empty string of visible ASCII characters"}
  end

  def cast_token({:system, variable}) when is_binary(variable) do
    case System.fetch_env(variable) do
      # Stripped as the worker strips the SYNAPSE_WORKER_TOKEN it reads:
      # one variable (or secret file, often ending in a newline) serves both.
      {:ok, token} -> cast_token(String.trim(token))
      :error -> {:error, "the environment variable #{variable} is not set"}
    end
  end

  def cast_token(token) when is_function(token, 0), do: {:ok, token}

  def cast_token(_other),
    do: {:error, ~s(expected a string, {:system, "VAR"} or a function of arity 0)}

  @doc false
  # What a bearer token may hold: visible ASCII (what an HTTP header value
  # carries), checked for tokens that functions return too.
  @spec header_text?(term()) :: boolean()
  def header_text?(token) when is_binary(token) and token != "",
    do: token |> :binary.bin_to_list() |> Enum.all?(&(&1 in 0x21..0x7E))

  def header_text?(_token), do: false

  @doc false
  # A spec file: read now, so that a missing or unreadable file fails the
  # start at once, and every worker (remote ones too) gets its text.
  def cast_spec_file(entry) do
    with {:ok, entry} <- SynapseCore.Python.cast_path_entry(entry),
         path = SynapseCore.Python.resolve_path(entry),
         {:ok, format} <- spec_format(path) do
      case File.read(path) do
        {:ok, text} ->
          if String.valid?(text),
            do: {:ok, %{path: path, format: format, text: text}},
            else: {:error, "#{path} is not UTF-8 text"}

        {:error, reason} ->
          {:error, "cannot read #{path}: #{:file.format_error(reason)}"}
      end
    end
  end

  defp spec_format(path) do
    case path |> Path.extname() |> String.downcase() do
      ext when ext in [".yaml", ".yml"] -> {:ok, "yaml"}
      ".json" -> {:ok, "json"}
      _other -> {:error, ~s|expected a ".yaml", ".yml" or ".json" file, got #{path}|}
    end
  end

  @doc false
  # A capability in pydantic-ai's spec form: "Name", or %{"Name" => arguments}
  # (a map of keyword arguments, or one positional argument).
  def cast_capability(name) when is_binary(name) and name != "", do: {:ok, name}

  def cast_capability({name, arguments}) when is_binary(name) and name != "" do
    arguments =
      if is_list(arguments) and arguments != [] and Keyword.keyword?(arguments),
        do: Map.new(arguments),
        else: arguments

    capability = %{name => worker_env_refs(arguments)}

    case Options.json_form(capability) do
      :ok -> {:ok, capability}
      {:error, why} -> {:error, "the arguments of #{inspect(name)} have no JSON form (#{why})"}
    end
  catch
    :improper_list ->
      {:error, "the arguments of #{inspect(name)} hold an improper list, which has no JSON form"}
  end

  def cast_capability(%{} = capability)
      when map_size(capability) == 1 and not is_struct(capability) do
    case Map.to_list(capability) do
      [{name, arguments}] when is_binary(name) -> cast_capability({name, arguments})
      _other -> cast_capability(nil)
    end
  end

  def cast_capability(_other),
    do: {:error, ~s|expected "Name", {"Name", arguments} or %{"Name" => arguments}|}

  # `{:system, "VAR"}` in a capability's arguments (an MCP server's
  # `authorization_token`, a header): the worker's environment variable
  # VAR, read by the worker (see `synapse_python._spec`), so that the secret
  # is in no term here. The marker is what the worker looks for.
  @worker_env_ref "$synapse_worker_env"
  defp worker_env_refs({:system, variable}) when is_binary(variable),
    do: %{@worker_env_ref => variable}

  defp worker_env_refs(map) when is_map(map) and not is_struct(map),
    do: Map.new(map, fn {key, value} -> {key, worker_env_refs(value)} end)

  defp worker_env_refs(list) when is_list(list) do
    if List.improper?(list),
      do: throw(:improper_list),
      else: Enum.map(list, &worker_env_refs/1)
  end

  defp worker_env_refs(other), do: other

  @doc false
  def cast_reference(ref) when is_binary(ref) do
    if String.match?(ref, ~r/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/),
      do: {:ok, ref},
      else: {:error, ~s(expected a string like "package.module:attribute")}
  end

  def cast_reference(_other), do: {:error, ~s(expected a string like "package.module:attribute")}

  @doc false
  def cast_module(module) when is_binary(module) do
    if String.match?(module, ~r/^[A-Za-z_][\w.]*$/),
      do: {:ok, module},
      else: {:error, "expected the name of a Python module"}
  end

  def cast_module(_other), do: {:error, "expected the name of a Python module"}

  @doc false
  def cast_tools(tools) do
    {:ok, SynapseCore.Tool.expand(tools)}
  rescue
    error in ArgumentError -> {:error, Exception.message(error)}
  end

  @doc false
  def cast_history(nil), do: {:ok, nil}

  def cast_history(%SynapseCore.Result{messages: nil}),
    do: {:error, "a result run with `messages: false` carries no conversation to continue"}

  def cast_history(%SynapseCore.Result{messages: messages}), do: cast_history(messages)

  def cast_history(%SynapseCore.Messages{json: json} = messages) when is_binary(json),
    do: {:ok, messages}

  def cast_history(messages) when is_list(messages) do
    if List.improper?(messages),
      do: {:error, "expected a list of message maps, got an improper list"},
      else: {:ok, messages}
  end

  def cast_history(_other),
    do:
      {:error,
       "expected a previous result's `messages` (a SynapseCore.Messages), a result, " <>
         "or a list of message maps"}

  @doc false
  def cast_event_kinds(:all), do: {:ok, SynapseCore.Event.kinds()}

  def cast_event_kinds([_ | _] = kinds) do
    if not List.improper?(kinds) and Enum.all?(kinds, &(&1 in SynapseCore.Event.kinds())),
      do: {:ok, Enum.uniq(kinds)},
      else: {:error, "expected :all or a list of #{inspect(SynapseCore.Event.kinds())}"}
  end

  def cast_event_kinds(_other),
    do: {:error, "expected :all or a non-empty list of #{inspect(SynapseCore.Event.kinds())}"}
end
