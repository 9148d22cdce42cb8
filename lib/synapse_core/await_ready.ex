defmodule SynapseCore.AwaitReady do
  @moduledoc """
  A boot barrier: a child of a supervision tree that waits until agents (or
  bridges) started before it with `await_ready: false` are ready.

  A supervisor starts its children one after another, and an agent started
  with the default `await_ready: true` returns from its `start_link/1` only
  once its workers serve: each agent's Python workers start (1–2 s) before
  the next agent's begin. With `await_ready: false` an agent's `start_link/1`
  returns as soon as its processes exist and its workers start in the
  background, so the agents of a tree start in parallel; put this child
  after them to have the boot wait for all of them at once:

      children = [
        {SynapseCore.Agent, name: :support, agent: "my_app.agents:support", await_ready: false},
        {SynapseCore.Agent, name: :billing, agent: "my_app.agents:billing", await_ready: false},
        {SynapseCore.AwaitReady, [:support, :billing]},
        MyAppWeb.Endpoint
      ]

  Its `start_link/1` returns `:ignore` (no process is left) once every
  worker of every named agent serves, or the first error: a worker whose
  first start failed (`{:error, %SynapseCore.Error{}}`, e.g. a module that
  does not import) fails the boot there. Each worker has its agent's
  `:startup_timeout` to be ready; one that is not fails with
  `:startup_failed`. A remote worker that is not up yet does not hold the
  boot (see `SynapseCore.Worker`).

  Leave the barrier out to boot without waiting at all: calls meanwhile
  return `{:error, %SynapseCore.Error{kind: :unavailable}}`, and an agent
  whose first start fails answers every call with the failure.
  """

  alias SynapseCore.Error

  @doc """
  A child specification: `{SynapseCore.AwaitReady, names}` or
  `{SynapseCore.AwaitReady, names: names, timeout: ms}` (a keyword list
  without `:names` raises `ArgumentError`).
  """
  @spec child_spec([term()] | keyword()) :: Supervisor.child_spec()
  def child_spec(arg) do
    %{id: {__MODULE__, names(arg)}, start: {__MODULE__, :start_link, [arg]}, restart: :temporary}
  end

  @doc """
  Waits for the agents of `arg` (see `child_spec/1`); `:ignore` once they
  are ready, `{:error, %SynapseCore.Error{}}` otherwise.
  """
  @spec start_link([term()] | keyword()) :: :ignore | {:error, Error.t()}
  def start_link(arg) do
    timeout = if Keyword.keyword?(arg) and arg != [], do: Keyword.get(arg, :timeout, :infinity)

    case SynapseCore.await_ready(names(arg), timeout || :infinity) do
      :ok -> :ignore
      {:error, error} -> {:error, error}
    end
  end

  defp names(arg) do
    cond do
      not Keyword.keyword?(arg) or arg == [] ->
        arg

      Keyword.has_key?(arg, :names) ->
        Keyword.fetch!(arg, :names)

      true ->
        raise ArgumentError,
              "expected {SynapseCore.AwaitReady, names} or " <>
                "{SynapseCore.AwaitReady, names: names, timeout: ms}, got a keyword list without :names"
    end
  end
end
