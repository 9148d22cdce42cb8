defmodule SynapseCore.Transports do
  @moduledoc false
  # Runs a test module's tests once per transport a call can take to a
  # local worker: its lane (the default) and gRPC (`transport: :grpc`).
  #
  #     use ExUnit.Case, async: true
  #     use SynapseCore.Transports
  #
  # Each `test "name"` becomes "name [lane]" and "name [grpc]", tagged
  # `transport: :lane | :grpc` (run one with `--only transport:grpc`), and
  # the agents and bridges SynapseCore.TestHelpers starts for a test
  # (`transport/0`) use its transport. Tags given before a test apply to both.

  @transports [:lane, :grpc]

  @doc "The transports tests run on."
  def all, do: @transports

  defmacro __using__(_opts) do
    quote do
      import ExUnit.Case, except: [test: 2, test: 3]
      import SynapseCore.Transports, only: [test: 2, test: 3]

      setup context do
        SynapseCore.TestHelpers.put_transport(Map.get(context, :transport, :lane))
      end
    end
  end

  defmacro test(message, var \\ quote(do: _), contents) do
    copies =
      for transport <- @transports do
        quote do
          # Tags written before the test are consumed by each copy: write
          # them again for the next.
          for tag <- tags, do: Module.put_attribute(__MODULE__, :tag, tag)
          @tag transport: unquote(transport)
          ExUnit.Case.test(
            unquote(message) <> unquote(" [#{transport}]"),
            unquote(var),
            unquote(contents)
          )
        end
      end

    quote do
      tags = Enum.reverse(Module.get_attribute(__MODULE__, :tag) || [])
      Module.delete_attribute(__MODULE__, :tag)
      unquote_splicing(copies)
    end
  end
end
