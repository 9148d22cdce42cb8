defmodule Mix.Tasks.Synapse.Setup do
  @shortdoc "Builds the application's Python environment for Synapse's workers (uv)"
  @moduledoc """
  Builds the Python environment Synapse's workers run in, from the packages
  the application declares, with [uv](https://docs.astral.sh/uv/):

      # config/config.exs
      config :synapse_core,
        python_packages: ["pydantic-ai-slim[anthropic,google,logfire]", "my-lib>=1.2"],
        python_dev_packages: ["pytest"]

      mix synapse.setup [--dev | --no-dev] [--python PYTHON] [--locked | --upgrade] [--quiet]

  Synapse's own pinned runtime packages (`priv/python/requirements.txt` of
  synapse_core) are added to `:python_packages`. Any PEP 508 requirement
  works (versions, extras, markers, URLs). Put both keys in
  `config/config.exs`: every Mix environment reads the same lock.

  What it does:

    1. locks the packages into `python.lock` at the application's root
       (uv's lock format, for every platform): commit it. An existing lock is
       kept as it is as far as the config allows, so adding a package does
       not upgrade the others;
    2. installs exactly the locked packages into
       `_build/<MIX_ENV>/synapse_python/.venv`: the dev packages in the dev
       and test environments, never in `:prod`;
    3. generates the Python gRPC stubs of Synapse's wire contract.

  Nothing is written inside the synapse_core dependency but those stubs.
  When neither the config, the lock nor the options changed since the last
  run, it only checks that and returns. `SynapseCore.Python` finds the
  environment at run time; releases build their own with
  `SynapseCore.Release`.

  uv comes from PyPI (`python3 -m pip install --user uv`, or `pipx install
  uv`); `./script/setup` of synapse_core installs it. Set `SYNAPSE_UV` to use
  a particular executable.

  Options:

    * `--dev` / `--no-dev` - install the `:python_dev_packages` or not.
      Defaults to `--dev` in every environment but `:prod`.
    * `--python` - the interpreter uv builds the environment on: a path, a
      command or a version (`3.12`). Defaults to `$SYNAPSE_BOOTSTRAP_PYTHON`,
      then uv's own choice (the first Python 3.11+ it finds).
    * `--locked` - fail instead of changing `python.lock` (for CI).
    * `--upgrade` - upgrade every package to the newest allowed version.
    * `--quiet` - print only errors.
  """

  use Mix.Task

  alias Mix.Synapse.PythonEnv

  @switches [dev: :boolean, python: :string, locked: :boolean, upgrade: :boolean, quiet: :boolean]

  @impl Mix.Task
  def run(args) do
    {opts, _} = OptionParser.parse!(args, strict: @switches)
    started = System.monotonic_time(:millisecond)
    env = PythonEnv.declared()
    remove_legacy_venv(env.synapse_root)

    build_opts = [
      dev: Keyword.get(opts, :dev, Mix.env() != :prod),
      python: opts[:python] || System.get_env("SYNAPSE_BOOTSTRAP_PYTHON"),
      lock: lock_mode(opts),
      quiet: Keyword.get(opts, :quiet, false)
    ]

    {status, python} = PythonEnv.build(env, PythonEnv.build_dir(), build_opts)
    stubs = Path.join(env.synapse_root, "priv/python/synapse_python/_proto")
    PythonEnv.generate_stubs(python, env.synapse_root, stubs)

    unless opts[:quiet] do
      elapsed = System.monotonic_time(:millisecond) - started
      what = if status == :noop, do: "up to date", else: "ready"

      Mix.shell().info(
        "Python environment #{what}: #{Path.relative_to_cwd(python)} (#{elapsed} ms)"
      )
    end
  end

  defp lock_mode(opts) do
    case {opts[:locked], opts[:upgrade]} do
      {true, true} -> Mix.raise("--locked and --upgrade cannot be combined")
      {true, _} -> :check
      {_, true} -> :upgrade
      _ -> :update
    end
  end

  # Before uv, the environment lived in the dependency's own priv directory,
  # where `mix release` copied it into every release.
  defp remove_legacy_venv(synapse_root) do
    legacy = Path.join(synapse_root, "priv/python/.venv")

    if File.dir?(legacy) do
      Mix.shell().info("==> removing the old environment at #{Path.relative_to_cwd(legacy)}")
      File.rm_rf!(legacy)
    end
  end
end
