defmodule SynapseCore.TestTools do
  @moduledoc false
  # Tools for the tool tests, defined the way users define them. Tools that
  # report to the test process find its pid in the context's `deps`.
  use SynapseCore.Tools

  @doc "Multiplies two integers."
  @tool a: [type: :integer, description: "The first factor"], b: :integer
  def multiply(%{a: a, b: b}), do: a * b

  @doc "Files a lookup request; reports its arguments to the test."
  @tool kind: {:enum, [:order, :invoice]},
        ids: {:list, :integer},
        note: [type: :string, required: false, default: "none"],
        filter: [type: {:map, [status: :string, urgent: :boolean]}, required: false]
  def lookup(args, context) do
    send(context.deps, {:tool_called, :lookup, args, context})
    {:ok, %{found: length(args.ids)}}
  end
end
