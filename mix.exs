# The Mix compiler that builds the Rust crates lives outside lib/: it must
# exist before this project compiles, also when synapse_core is a dependency.
Code.require_file("mix/tasks/compile.synapse_native.ex", __DIR__)

defmodule SynapseCore.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :synapse_core,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:synapse_native | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      test_coverage: [ignore_modules: [~r/^Mix\.Tasks\./]],
      description: "Run, supervise and call pydantic-ai agents from the BEAM",
      # For ex_doc, when an application adds it: the README and the
      # architecture beside the module docs.
      docs: [main: "readme", extras: ["README.md", "docs/architecture.md"]]
    ]
  end

  def application do
    [
      mod: {SynapseCore.Application, []},
      # :public_key checks the TLS options' CA certificates.
      extra_applications: [:logger, :public_key]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_env), do: ["lib"]
end
