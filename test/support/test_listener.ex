defmodule SynapseCore.TestListener do
  @moduledoc false
  # A process for tests, on any node (this module is on every peer's code
  # path): it forwards every message it gets to `parent`, tagged with its
  # pid and node; as a subscriber of a streamed run it acknowledges each
  # event it forwarded; as an approver it decides when told to, from its
  # own node, answering `parent` what `approve/3` or `deny/3` returned.

  @doc "Starts one on this node, in the :pg group `{scope, group}` when given (starting the scope if needed)."
  def start(parent, pg \\ nil) do
    starter = self()

    pid =
      spawn(fn ->
        with {scope, group} <- pg do
          case :pg.start(scope) do
            {:ok, _} -> :ok
            {:error, {:already_started, _}} -> :ok
          end

          :ok = :pg.join(scope, group, self())
        end

        send(starter, {self(), :ready})
        loop(parent, nil)
      end)

    receive do
      {^pid, :ready} -> pid
    end
  end

  @doc """
  In the parent: the events of run `ref` that `listener` forwarded, up to
  and including the final one.
  """
  def events(listener, ref, events \\ []) do
    receive do
      {^listener, _, {:synapse_event, ^ref, {final, _} = event}}
      when final in [:result, :error] ->
        Enum.reverse([event | events])

      {^listener, _, {:synapse_event, ^ref, event}} ->
        events(listener, ref, [event | events])
    after
      15_000 -> raise "#{inspect(listener)}'s stream stalled"
    end
  end

  @doc "Tells `approver` to call `SynapseCore.Agent.<function>(approval, argument)`; returns what it returned."
  def decide(approver, function, approval, argument) do
    send(approver, {:decide, self(), function, approval, argument})

    receive do
      {^approver, :decided, answer} -> answer
    after
      10_000 -> flunk_decision(approver)
    end
  end

  defp flunk_decision(approver), do: raise("approver #{inspect(approver)} did not answer")

  defp loop(parent, run) do
    receive do
      {:decide, from, function, approval, argument} ->
        send(from, {self(), :decided, apply(SynapseCore.Agent, function, [approval, argument])})
        loop(parent, run)

      {:synapse_subscribed, run} = message ->
        send(parent, {self(), node(), message})
        loop(parent, run)

      {:synapse_event, _ref, _event} = message ->
        send(parent, {self(), node(), message})
        :ok = SynapseCore.Agent.ack(run)
        loop(parent, run)

      message ->
        send(parent, {self(), node(), message})
        loop(parent, run)
    end
  end
end
