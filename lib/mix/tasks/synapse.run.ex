defmodule Mix.Tasks.Synapse.Run do
  @shortdoc "Runs a prompt on a supervised pydantic-ai agent and prints the result"
  @moduledoc """
  Starts a supervised agent, runs one prompt on it and prints the output and
  the usage.

      mix synapse.run "Where is my order 42?"
      mix synapse.run "Hello" --agent my_app.agents:support_agent --python-path py/
      mix synapse.run "Hello" --model openai:gpt-4o --env OPENAI_API_KEY

  Options:

    * `--agent` - the agent as `package.module:attribute`. Defaults to the
      example agent `synapse_examples:support_agent` in `examples/python`.
    * `--model` - a pydantic-ai model string overriding the agent's model
      (`test` is pydantic-ai's offline TestModel).
    * `--python-path` - a directory to put on the worker's PYTHONPATH; may
      be repeated.
    * `--env` - the name of an environment variable to pass to the worker
      (e.g. an API key); may be repeated.
    * `--timeout` - milliseconds before the run is cancelled (default 60000).
    * `--verbose` - also show the worker's log lines.
  """

  use Mix.Task

  @requirements ["app.start"]

  @impl Mix.Task
  def run(args) do
    {opts, positional} =
      OptionParser.parse!(args,
        strict: [
          agent: :string,
          model: :string,
          python_path: :keep,
          env: :keep,
          timeout: :integer,
          verbose: :boolean
        ]
      )

    unless opts[:verbose], do: Logger.configure(level: :warning)

    prompt =
      case positional do
        [prompt] -> prompt
        _ -> Mix.raise(~s(usage: mix synapse.run "prompt" [--agent module:attr] [--model test]))
      end

    {agent, python_path} =
      case opts[:agent] do
        nil -> {"synapse_examples:support_agent", [examples_dir()]}
        agent -> {agent, []}
      end

    agent_opts =
      [
        name: :synapse_run,
        agent: agent,
        python_path: python_path ++ Keyword.get_values(opts, :python_path),
        env: Keyword.get_values(opts, :env)
      ] ++ if(opts[:model], do: [model: opts[:model]], else: [])

    with {:ok, _pid} <- SynapseCore.start_agent(agent_opts),
         {:ok, result} <-
           SynapseCore.Agent.run_sync(:synapse_run, prompt, timeout: opts[:timeout] || 60_000) do
      print(result)
      SynapseCore.stop_agent(:synapse_run)
    else
      {:error, %SynapseCore.Error{} = error} -> Mix.raise(Exception.message(error))
    end
  end

  defp print(%SynapseCore.Result{output: output, usage: usage}) do
    text = if is_binary(output), do: output, else: inspect(output, pretty: true)
    Mix.shell().info(text)

    Mix.shell().info(
      "\nusage: #{usage.input_tokens} input tokens, #{usage.output_tokens} output tokens, " <>
        "#{usage.requests} request(s)"
    )
  end

  defp examples_dir do
    root =
      if Mix.Project.config()[:app] == :synapse_core,
        do: File.cwd!(),
        else: Mix.Project.deps_paths() |> Map.fetch!(:synapse_core)

    Path.join(root, "examples/python")
  end
end
