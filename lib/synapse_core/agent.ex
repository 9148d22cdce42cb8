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
  """

  alias SynapseCore.{AgentProcess, AgentSupervisor, Error, Native, Result}
  alias SynapseCore.Agent.Options

  @typedoc "An agent's name: any term, usually an atom."
  @type name :: term()

  @typedoc "Options of `start_link/1`; see its documentation."
  @type option ::
          {:name, name()}
          | {:agent, String.t()}
          | {:model, String.t()}
          | {:instructions, String.t()}
          | {:workers, pos_integer()}
          | {:python, String.t()}
          | {:python_path, [Path.t()]}
          | {:env, SynapseCore.Python.env_option()}
          | {:cwd, Path.t()}
          | {:startup_timeout, pos_integer()}
          | {:shutdown_timeout, non_neg_integer()}

  @typedoc "Options of a run; see `run_sync/3`."
  @type run_option ::
          {:message_history, [map()] | Result.t() | nil}
          | {:model_settings, map() | keyword() | nil}
          | {:timeout, timeout()}

  @doc """
  A child specification, so that an agent can be put in a supervision tree.
  Takes the options of `start_link/1`; the child's id is `{SynapseCore.Agent, name}`.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    options = Options.agent!(opts)

    %{
      id: {__MODULE__, options.name},
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  @doc """
  Starts an agent and links it to the caller. Returns once every worker is
  ready and has loaded the agent.

  ## Options

    * `:name` (required) - the agent's name, used for every call. Any term,
      unique among agents.
    * `:agent` - the pydantic-ai agent, as `"package.module:attribute"`:
      a `pydantic_ai.Agent`, or a zero-argument function returning one.
    * `:model` - any pydantic-ai model string (`"openai:gpt-4o"`,
      `"anthropic:claude-sonnet-4-5"`, `"test"` for pydantic-ai's offline
      `TestModel`, ...). With `:agent`, it overrides the agent's own model.
      Without `:agent`, the agent is defined from Elixir and `:model` is
      required.
    * `:instructions` - for an agent defined from Elixir: its instructions
      (system prompt).
    * `:workers` - the number of Python processes serving the agent.
      Defaults to `1`.
    * `:python` - the Python interpreter; see `SynapseCore.Python` for the
      default.
    * `:python_path` - directories prepended to the worker's `PYTHONPATH`,
      where the `:agent` module is found. Defaults to `[]`.
    * `:env` - environment variables for the worker: `{"NAME", "value"}`
      pairs, or `"NAME"` to pass the BEAM's own value through. Workers do
      not inherit the BEAM's environment otherwise; see `SynapseCore.Python`.
    * `:cwd` - the worker's working directory. Defaults to the BEAM's.
    * `:startup_timeout` - milliseconds a worker has to start, import the
      agent and be ready. Defaults to `30_000`.
    * `:shutdown_timeout` - milliseconds a stopping worker has between
      SIGTERM and SIGKILL. Defaults to `5_000`.

  Raises `ArgumentError` for invalid options. When a worker cannot start
  (no interpreter, a module that does not import, an attribute that is not
  an agent, ...), returns `{:error, %SynapseCore.Error{kind: :startup_failed}}`
  whose message carries Python's own.
  """
  @spec start_link([option()]) :: {:ok, pid()} | {:error, Error.t() | term()}
  def start_link(opts) do
    opts |> Options.agent!() |> AgentSupervisor.start_link() |> unwrap_start_error()
  end

  @doc false
  @spec unwrap_start_error(Supervisor.on_start()) :: {:ok, pid()} | {:error, Error.t() | term()}
  def unwrap_start_error(
        {:error, {:shutdown, {:failed_to_start_child, _id, {:shutdown, %Error{} = error}}}}
      ),
      do: {:error, error}

  def unwrap_start_error({:error, {:already_started, _pid}}),
    do: {:error, Error.new(:invalid_argument, "an agent with this name is already running")}

  def unwrap_start_error(other), do: other

  @doc """
  Runs the agent on `prompt` and waits for its result.

  ## Options

    * `:message_history` - the conversation so far: a previous result's
      `messages` (or the result itself). Defaults to none.
    * `:model_settings` - pydantic-ai model settings for this run, as a map
      or keyword list, e.g. `[temperature: 0.2, max_tokens: 200]`.
    * `:timeout` - milliseconds before the run is cancelled (in Python too)
      and `{:error, %SynapseCore.Error{kind: :timeout}}` is returned, or
      `:infinity`. Defaults to `60_000`.

  ## Errors

  Returns `{:error, %SynapseCore.Error{}}` whose `kind` is, among others,
  `:unknown_agent` (no agent has that name), `:unavailable` (no worker is
  ready, e.g. while one restarts), `:worker_exited`, `:timeout`,
  `:invalid_argument` or `:python_error`; see `SynapseCore.Error`. Raises
  `ArgumentError` for invalid options.
  """
  @spec run_sync(name(), String.t(), [run_option()]) :: {:ok, Result.t()} | {:error, Error.t()}
  def run_sync(name, prompt, opts \\ []) when is_binary(prompt) do
    call = Options.call!(opts)

    with :ok <- check_prompt(prompt),
         {:ok, channel} <- pick_worker(name) do
      request = %{
        agent_id: "agent",
        prompt: prompt,
        message_history: call.message_history,
        model_settings: call.model_settings
      }

      tag = make_ref()

      started =
        if large?(call.message_history),
          do: Native.run_start_dirty(channel.resource, self(), tag, request, call.timeout),
          else: Native.run_start(channel.resource, self(), tag, request, call.timeout)

      case started do
        {:ok, handle} -> await(tag, handle, call.timeout)
        {:error, native} -> {:error, Error.from_native(native)}
      end
    end
  end

  @doc """
  Like `run_sync/3`, but returns the result directly and raises
  `SynapseCore.Error` on failure.
  """
  @spec run_sync!(name(), String.t(), [run_option()]) :: Result.t()
  def run_sync!(name, prompt, opts \\ []) do
    case run_sync(name, prompt, opts) do
      {:ok, result} -> result
      {:error, error} -> raise error
    end
  end

  @doc """
  The workers currently ready to serve `name`: their `SynapseCore.AgentProcess`
  pid, OS pid and address.
  """
  @spec workers(name()) :: [%{pid: pid(), os_pid: pos_integer(), address: String.t()}]
  def workers(name) do
    for {pid, _value} <- Registry.lookup(SynapseCore.WorkerRegistry, name),
        info = safe_info(pid),
        do: Map.put(info, :pid, pid) |> Map.delete(:agent)
  end

  defp safe_info(pid) do
    AgentProcess.info(pid)
  catch
    :exit, _ -> nil
  end

  # Histories past this many messages are converted to JSON on a dirty
  # scheduler: it can take longer than a normal scheduler slot should.
  @dirty_history_length 16

  defp large?(nil), do: false
  defp large?(history), do: length(history) > @dirty_history_length

  defp check_prompt(prompt) do
    if String.valid?(prompt),
      do: :ok,
      else: {:error, Error.new(:invalid_argument, "the prompt is not valid UTF-8")}
  end

  defp pick_worker(name) do
    case Registry.lookup(SynapseCore.WorkerRegistry, name) do
      [{_pid, %{channel: channel}}] ->
        {:ok, channel}

      [_ | _] = workers ->
        {_pid, %{channel: channel}} = Enum.random(workers)
        {:ok, channel}

      [] ->
        if Registry.lookup(SynapseCore.AgentRegistry, name) == [] do
          {:error, Error.new(:unknown_agent, "no agent named #{inspect(name)} is running")}
        else
          {:error,
           Error.new(
             :unavailable,
             "agent #{inspect(name)} has no worker ready (it is starting or restarting)"
           )}
        end
    end
  end

  # The NIF answers exactly once, at the latest when the deadline passes; the
  # margin here only protects the caller against a reply that never comes.
  defp await(tag, handle, timeout) do
    receive do
      {:synapse_reply, ^tag, reply} -> decode(reply)
    after
      safety_timeout(timeout) ->
        Native.run_cancel(handle)

        receive do
          {:synapse_reply, ^tag, _reply} -> :ok
        after
          1_000 -> :ok
        end

        {:error, Error.new(:timeout, "no reply from the worker within #{timeout} ms")}
    end
  end

  defp safety_timeout(:infinity), do: :infinity
  defp safety_timeout(timeout), do: timeout + 5_000

  defp decode({:ok, result}), do: {:ok, Result.from_native(result)}
  defp decode({:error, native}), do: {:error, Error.from_native(native)}
end
