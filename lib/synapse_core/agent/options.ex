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
    workers: 1,
    python_path: [],
    env: [],
    startup_timeout: 30_000,
    shutdown_timeout: 5_000
  ]

  @type source :: {:ref, String.t()} | {:spec, %{model: String.t(), instructions: String.t()}}

  @type t :: %__MODULE__{
          name: term(),
          source: source(),
          model: String.t() | nil,
          python: String.t() | nil,
          cwd: String.t() | nil,
          workers: pos_integer(),
          python_path: [String.t()],
          env: SynapseCore.Python.env_option(),
          startup_timeout: pos_integer(),
          shutdown_timeout: non_neg_integer()
        }

  @agent_keys [
    :name,
    :agent,
    :model,
    :instructions,
    :workers,
    :python,
    :python_path,
    :env,
    :cwd,
    :startup_timeout,
    :shutdown_timeout
  ]

  @spec agent!(keyword()) :: t()
  def agent!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, @agent_keys)
    name = Keyword.get(opts, :name) || raise ArgumentError, "the :name option is required"

    %__MODULE__{
      name: name,
      source: source!(opts),
      model: optional_string!(opts, :model),
      python: optional_string!(opts, :python),
      cwd: optional_string!(opts, :cwd),
      workers: positive_integer!(opts, :workers, 1),
      python_path: string_list!(opts, :python_path),
      env: env!(Keyword.get(opts, :env, [])),
      startup_timeout: positive_integer!(opts, :startup_timeout, 30_000),
      shutdown_timeout: non_negative_integer!(opts, :shutdown_timeout, 5_000)
    }
  end

  def agent!(other),
    do: raise(ArgumentError, "expected agent options as a keyword list, got: #{inspect(other)}")

  defp source!(opts) do
    case {Keyword.get(opts, :agent), Keyword.get(opts, :instructions)} do
      {nil, instructions} ->
        model =
          optional_string!(opts, :model) ||
            raise ArgumentError,
                  "give either :agent (\"module:attribute\" of a pydantic-ai agent) " <>
                    "or :model (to define the agent from Elixir)"

        {:spec, %{model: model, instructions: string_or_empty!(instructions, :instructions)}}

      {ref, nil} when is_binary(ref) ->
        if String.match?(ref, ~r/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/) do
          {:ref, ref}
        else
          raise ArgumentError,
                "the :agent option must look like \"package.module:attribute\", got: #{inspect(ref)}"
        end

      {ref, nil} ->
        raise ArgumentError, "the :agent option must be a string, got: #{inspect(ref)}"

      {_ref, _instructions} ->
        raise ArgumentError,
              ":instructions defines an agent from Elixir and cannot be combined with :agent; " <>
                "set the instructions on the Python agent instead"
    end
  end

  @typedoc "Validated options of one run."
  @type call :: %{
          message_history: [map()] | nil,
          model_settings: map() | nil,
          timeout: timeout()
        }

  @spec call!(keyword()) :: call()
  def call!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, message_history: nil, model_settings: nil, timeout: 60_000)

    %{
      message_history: history!(opts[:message_history]),
      model_settings: settings!(opts[:model_settings]),
      timeout: timeout!(opts[:timeout])
    }
  end

  def call!(other),
    do: raise(ArgumentError, "expected call options as a keyword list, got: #{inspect(other)}")

  defp history!(nil), do: nil
  defp history!(%SynapseCore.Result{messages: messages}), do: messages
  defp history!(messages) when is_list(messages), do: messages

  defp history!(other) do
    raise ArgumentError,
          ":message_history must be a list of messages (a previous result's `messages`), " <>
            "got: #{inspect(other)}"
  end

  defp settings!(nil), do: nil
  defp settings!(settings) when is_map(settings), do: settings

  defp settings!(settings) when is_list(settings) do
    if Keyword.keyword?(settings) do
      Map.new(settings)
    else
      raise ArgumentError,
            ":model_settings must be a map or keyword list, got: #{inspect(settings)}"
    end
  end

  defp settings!(other),
    do:
      raise(
        ArgumentError,
        ":model_settings must be a map or keyword list, got: #{inspect(other)}"
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
