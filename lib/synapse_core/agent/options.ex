defmodule SynapseCore.Agent.Options do
  @moduledoc false
  # Validation of the options of `SynapseCore.Agent.start_link/1` and of each
  # call. Everything is checked here, in Elixir, before it reaches a worker.

  @enforce_keys [:name, :source]
  defstruct [
    :name,
    :source,
    :model,
    :python,
    :cwd,
    :deps_factory,
    workers: 1,
    remote: [],
    tls: nil,
    token: nil,
    tools: [],
    python_path: [],
    env: [],
    startup_timeout: 30_000,
    shutdown_timeout: 5_000,
    health_interval: 5_000,
    health_timeout: 5_000,
    max_backoff: 30_000,
    max_message_bytes: 64 * 1024 * 1024
  ]

  @type source ::
          {:bridge, String.t()}
          | {:ref, String.t()}
          | {:spec, %{model: String.t(), instructions: String.t(), output_schema: map() | nil}}

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
          python_path: [String.t()],
          env: SynapseCore.Python.env_option(),
          startup_timeout: pos_integer(),
          shutdown_timeout: non_neg_integer(),
          health_interval: pos_integer() | :infinity,
          health_timeout: pos_integer(),
          max_backoff: pos_integer(),
          max_message_bytes: pos_integer()
        }

  # Options every worker has, agent or bridge.
  @worker_keys [
    :name,
    :workers,
    :python,
    :python_path,
    :env,
    :cwd,
    :startup_timeout,
    :shutdown_timeout,
    :health_interval,
    :health_timeout,
    :max_backoff,
    :max_message_bytes,
    :remote,
    :tls,
    :token
  ]

  @spec agent!(keyword()) :: t()
  def agent!(opts) when is_list(opts) do
    opts =
      Keyword.validate!(
        opts,
        @worker_keys ++ [:agent, :model, :instructions, :output_schema, :tools, :deps_factory]
      )

    %{
      worker!(opts)
      | source: source!(opts),
        model: optional_string!(opts, :model),
        tools: SynapseCore.Tool.expand(Keyword.get(opts, :tools, [])),
        deps_factory: deps_factory!(opts[:deps_factory])
    }
  end

  def agent!(other),
    do: raise(ArgumentError, "expected agent options as a keyword list, got: #{inspect(other)}")

  @spec bridge!(keyword()) :: t()
  def bridge!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, [:module | @worker_keys])
    module = Keyword.get(opts, :module)

    unless is_binary(module) and String.match?(module, ~r/^[A-Za-z_][\w.]*$/) do
      raise ArgumentError,
            "the :module option must be the name of a Python module, got: #{inspect(module)}"
    end

    %{worker!(opts) | source: {:bridge, module}}
  end

  def bridge!(other),
    do: raise(ArgumentError, "expected bridge options as a keyword list, got: #{inspect(other)}")

  defp worker!(opts) do
    name = Keyword.get(opts, :name) || raise ArgumentError, "the :name option is required"

    %__MODULE__{
      name: name,
      source: nil,
      python: optional_string!(opts, :python),
      cwd: optional_string!(opts, :cwd),
      python_path: string_list!(opts, :python_path),
      env: env!(Keyword.get(opts, :env, [])),
      startup_timeout: positive_integer!(opts, :startup_timeout, 30_000),
      shutdown_timeout: non_negative_integer!(opts, :shutdown_timeout, 5_000)
    }
    |> worker_options!(opts)
  end

  defp source!(opts) do
    spec_keys = [:instructions, :output_schema]

    case {Keyword.get(opts, :agent), Keyword.take(opts, spec_keys)} do
      {nil, spec} ->
        model =
          optional_string!(opts, :model) ||
            raise ArgumentError,
                  "give either :agent (\"module:attribute\" of a pydantic-ai agent) " <>
                    "or :model (to define the agent from Elixir)"

        {:spec,
         %{
           model: model,
           instructions: string_or_empty!(spec[:instructions], :instructions),
           output_schema: schema!(spec[:output_schema])
         }}

      {ref, []} when is_binary(ref) ->
        if String.match?(ref, ~r/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/) do
          {:ref, ref}
        else
          raise ArgumentError,
                "the :agent option must look like \"package.module:attribute\", got: #{inspect(ref)}"
        end

      {ref, []} ->
        raise ArgumentError, "the :agent option must be a string, got: #{inspect(ref)}"

      {_ref, [{key, _} | _]} ->
        raise ArgumentError,
              "#{inspect(key)} defines an agent from Elixir and cannot be combined with :agent; " <>
                "set it on the Python agent instead"
    end
  end

  # What remote workers, health checks and limits need.
  defp worker_options!(options, opts) do
    remote = remote!(Keyword.get(opts, :remote, []))

    {tls, token} =
      if remote == [],
        do: {nil, nil},
        else: {tls!(opts[:tls]), token!(opts[:token])}

    workers = Keyword.get(opts, :workers, 1)

    unless is_integer(workers) and (workers > 0 or (workers == 0 and remote != [])) do
      raise ArgumentError,
            ":workers must be a positive integer (or 0 with :remote workers), got: #{inspect(workers)}"
    end

    %{
      options
      | workers: workers,
        remote: remote,
        tls: tls,
        token: token,
        health_interval:
          if(opts[:health_interval] == :infinity,
            do: :infinity,
            else: positive_integer!(opts, :health_interval, 5_000)
          ),
        health_timeout: positive_integer!(opts, :health_timeout, 5_000),
        max_backoff: positive_integer!(opts, :max_backoff, 30_000),
        max_message_bytes: positive_integer!(opts, :max_message_bytes, 64 * 1024 * 1024)
    }
  end

  defp remote!(addresses) when is_list(addresses) do
    Enum.map(addresses, fn
      "tcp://" <> _ = address ->
        address

      other ->
        raise ArgumentError,
              ":remote addresses must look like \"tcp://host:port\", got: #{inspect(other)}"
    end)
  end

  defp remote!(other), do: raise(ArgumentError, ":remote must be a list, got: #{inspect(other)}")

  # Remote workers are reached over TLS only.
  defp tls!(tls) when is_list(tls) do
    tls = Keyword.validate!(tls, [:ca, :server_name])

    pem =
      case tls[:ca] do
        {:pem, pem} when is_binary(pem) ->
          pem

        path when is_binary(path) ->
          File.read!(path)

        other ->
          raise ArgumentError,
                ":tls needs :ca (a PEM file path or {:pem, pem}), got: #{inspect(other)}"
      end

    [ca_pem: pem, server_name: tls[:server_name]]
  end

  defp tls!(other),
    do: raise(ArgumentError, ":remote workers need :tls (ca: path), got: #{inspect(other)}")

  # Kept in a function so that no inspect, log or crash report shows it.
  defp token!(token) when is_binary(token) and token != "", do: fn -> token end

  defp token!({:system, variable}) when is_binary(variable),
    do: token!(System.fetch_env!(variable))

  defp token!(token) when is_function(token, 0), do: token

  defp token!(_other),
    do:
      raise(
        ArgumentError,
        ":remote workers need a :token (a string, {:system, \"VAR\"} or a function)"
      )

  defp deps_factory!(nil), do: nil

  defp deps_factory!(ref) when is_binary(ref) do
    if String.match?(ref, ~r/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/) do
      ref
    else
      raise ArgumentError,
            ":deps_factory must look like \"package.module:function\", got: #{inspect(ref)}"
    end
  end

  defp deps_factory!(other),
    do: raise(ArgumentError, ":deps_factory must be a string, got: #{inspect(other)}")

  defp schema!(nil), do: nil
  defp schema!(schema) when is_map(schema), do: schema

  defp schema!(other),
    do: raise(ArgumentError, ":output_schema must be a JSON Schema map, got: #{inspect(other)}")

  @call_defaults [
    message_history: nil,
    model_settings: nil,
    usage_limits: nil,
    timeout: 60_000,
    tools: [],
    deps: nil,
    output_tool_return_content: nil
  ]

  @typedoc "Validated options of one run."
  @type call :: %{
          message_history: SynapseCore.Messages.t() | [map()] | nil,
          output_tool_return_content: String.t() | nil,
          model_settings: map() | nil,
          usage_limits: map() | nil,
          timeout: timeout(),
          tools: [SynapseCore.Tool.t()],
          deps: term()
        }

  @spec call!(keyword()) :: call()
  def call!(opts) when is_list(opts) do
    opts |> Keyword.validate!(@call_defaults) |> call_from()
  end

  def call!(other),
    do: raise(ArgumentError, "expected call options as a keyword list, got: #{inspect(other)}")

  @typedoc "Validated options of a streaming run."
  @type stream :: %{
          call: call(),
          stream_to: pid() | nil,
          window: pos_integer() | :infinity
        }

  @spec stream!(keyword()) :: stream()
  def stream!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, @call_defaults ++ [stream_to: nil, window: 64])

    %{
      call: opts |> Keyword.take(Keyword.keys(@call_defaults)) |> call_from(),
      stream_to: stream_to!(opts[:stream_to]),
      window: window!(opts[:window])
    }
  end

  def stream!(other),
    do: raise(ArgumentError, "expected stream options as a keyword list, got: #{inspect(other)}")

  defp call_from(opts) do
    %{
      message_history: history!(opts[:message_history]),
      model_settings: map_option!(opts[:model_settings], :model_settings),
      usage_limits: map_option!(opts[:usage_limits], :usage_limits),
      timeout: timeout!(opts[:timeout]),
      tools: SynapseCore.Tool.expand(opts[:tools]),
      deps: opts[:deps],
      output_tool_return_content:
        string_or_nil!(opts[:output_tool_return_content], :output_tool_return_content)
    }
  end

  defp string_or_nil!(nil, _key), do: nil
  defp string_or_nil!(value, key), do: string_or_empty!(value, key)

  defp stream_to!(nil), do: nil
  defp stream_to!(pid) when is_pid(pid) and node(pid) == node(), do: pid

  defp stream_to!(other),
    do: raise(ArgumentError, ":stream_to must be a local pid, got: #{inspect(other)}")

  defp window!(:infinity), do: :infinity
  defp window!(n) when is_integer(n) and n > 0, do: n

  defp window!(other),
    do:
      raise(
        ArgumentError,
        ":window must be a positive integer or :infinity, got: #{inspect(other)}"
      )

  defp history!(nil), do: nil
  defp history!(%SynapseCore.Result{messages: messages}), do: history!(messages)
  defp history!(%SynapseCore.Messages{json: json} = messages) when is_binary(json), do: messages
  defp history!(messages) when is_list(messages), do: messages

  defp history!(other) do
    raise ArgumentError,
          ":message_history must be a previous result's `messages` (a SynapseCore.Messages), " <>
            "the result itself, or a list of message maps, got: #{inspect(other)}"
  end

  defp map_option!(nil, _key), do: nil
  defp map_option!(map, _key) when is_map(map), do: map

  defp map_option!(list, key) when is_list(list) do
    if Keyword.keyword?(list) do
      Map.new(list)
    else
      raise ArgumentError, "#{inspect(key)} must be a map or keyword list, got: #{inspect(list)}"
    end
  end

  defp map_option!(other, key),
    do:
      raise(
        ArgumentError,
        "#{inspect(key)} must be a map or keyword list, got: #{inspect(other)}"
      )

  defp timeout!(:infinity), do: :infinity
  defp timeout!(ms) when is_integer(ms) and ms > 0, do: ms

  defp timeout!(other),
    do:
      raise(
        ArgumentError,
        ":timeout must be a positive integer or :infinity, got: #{inspect(other)}"
      )

  defp optional_string!(opts, key) do
    case Keyword.get(opts, key) do
      nil ->
        nil

      value when is_binary(value) and value != "" ->
        value

      value ->
        raise ArgumentError, "#{inspect(key)} must be a non-empty string, got: #{inspect(value)}"
    end
  end

  defp string_or_empty!(nil, _key), do: ""
  defp string_or_empty!(value, _key) when is_binary(value), do: value

  defp string_or_empty!(value, key),
    do: raise(ArgumentError, "#{inspect(key)} must be a string, got: #{inspect(value)}")

  defp positive_integer!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value > 0 ->
        value

      value ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(value)}"
    end
  end

  defp non_negative_integer!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value >= 0 ->
        value

      value ->
        raise ArgumentError,
              "#{inspect(key)} must be a non-negative integer, got: #{inspect(value)}"
    end
  end

  defp string_list!(opts, key) do
    case Keyword.get(opts, key, []) do
      list when is_list(list) ->
        Enum.map(list, fn
          item when is_binary(item) ->
            Path.expand(item)

          item ->
            raise ArgumentError,
                  "#{inspect(key)} must be a list of strings, got: #{inspect(item)}"
        end)

      other ->
        raise ArgumentError, "#{inspect(key)} must be a list of strings, got: #{inspect(other)}"
    end
  end

  defp env!(env) when is_map(env), do: env!(Map.to_list(env))

  defp env!(env) when is_list(env) do
    Enum.map(env, fn
      {name, value} when is_binary(name) and is_binary(value) ->
        {name, value}

      name when is_binary(name) ->
        name

      other ->
        raise ArgumentError,
              ":env entries must be {\"NAME\", \"value\"} or \"NAME\", got: #{inspect(other)}"
    end)
  end

  defp env!(other),
    do: raise(ArgumentError, ":env must be a list or a map, got: #{inspect(other)}")
end
