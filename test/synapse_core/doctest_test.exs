defmodule SynapseCore.DoctestTest do
  use ExUnit.Case, async: true

  doctest SynapseCore.Error
  doctest SynapseCore.Python
  doctest SynapseCore.Schema
  doctest SynapseCore.JSON
  doctest SynapseCore.Messages
  doctest SynapseCore.Event
  doctest SynapseCore.Prompt
  doctest SynapseCore.StreamState
  doctest SynapseCore.Shepherd.Protocol
  doctest SynapseCore.Worker
end
