defmodule ReleaseApp.MixProject do
  use Mix.Project

  def project do
    [
      app: :release_app,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [{:synapse_core, path: "../.."}],
      # `mix test` brings the test environment's Python environment up to date.
      aliases: [test: ["synapse.setup --quiet", "test"]],
      releases: [
        # The Python environment goes into the release after :assemble, and
        # with it into the tarball :tar makes.
        release_app: [steps: [:assemble, &SynapseCore.Release.python/1, :tar]]
      ]
    ]
  end

  def application do
    [mod: {ReleaseApp.Application, []}, extra_applications: [:logger]]
  end
end
