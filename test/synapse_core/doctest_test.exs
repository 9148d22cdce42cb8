defmodule SynapseCore.DoctestTest do
  use ExUnit.Case, async: true

  doctest SynapseCore.Error
  doctest SynapseCore.Python
  doctest SynapseCore.Shepherd
end
