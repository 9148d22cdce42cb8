defmodule SynapseCore.Run do
  @moduledoc """
  A run in flight, started with `SynapseCore.Agent.run/3` (or, with
  `:stream_to`, `SynapseCore.Agent.run_stream/3`).

  Like a `Task`, a run belongs to the process that started it: only that
  process can `SynapseCore.Agent.await/2` or `SynapseCore.Agent.yield/2` it,
  and if that process exits, the run is cancelled (in Python too). Any
  process may `SynapseCore.Agent.cancel/1` it.

  The fields are for reading: `ref` tags every message of the run
  (`{:synapse_event, ref, event}` for streamed runs), `agent` is the agent's
  name, `owner` the process that started it, `receiver` where a streamed
  run's events go.
  """

  @type t :: %__MODULE__{
          ref: reference(),
          handle: reference(),
          agent: term(),
          owner: pid(),
          receiver: pid() | nil,
          timeout: timeout()
        }

  @enforce_keys [:ref, :handle, :agent, :owner, :timeout]
  defstruct [:ref, :handle, :agent, :owner, :receiver, :timeout]
end
