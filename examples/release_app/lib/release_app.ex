defmodule ReleaseApp do
  @moduledoc "An application with its own pydantic-ai agent, built as a release."

  @doc "Asks the application's agent."
  @spec ask(String.t()) :: {:ok, String.t()} | {:error, SynapseCore.Error.t()}
  def ask(prompt) do
    with {:ok, result} <- SynapseCore.Agent.run_sync(:assistant, prompt) do
      {:ok, result.output}
    end
  end
end
