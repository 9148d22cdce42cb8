defmodule SynapseCore.Release do
  @moduledoc """
  A `mix release` step that puts the application's Python environment into
  the release.

      # mix.exs of the application
      def project do
        [
          ...,
          releases: [
            my_app: [steps: [:assemble, &SynapseCore.Release.python/1]]
          ]
        ]
      end

  After `:assemble` (and before `:tar`, if you make a tarball: the
  environment goes into it), the step builds, with uv, a new environment
  at `synapse_python/.venv` in the release, where `SynapseCore.Python`
  looks for it when the release runs:

    * exactly the packages of the application's committed `python.lock`:
      Synapse's runtime pins and `:python_packages`, never the
      `:python_dev_packages`. The step fails when `python.lock` is missing or
      does not match the config: run `mix synapse.setup` and commit it;
    * relocatable: files are copied (not linked to uv's cache), scripts find
      their interpreter relative to themselves, and bytecode is compiled
      ahead, so the release can be moved, archived and run read-only;
    * the Python gRPC stubs of Synapse's wire contract are generated into
      the release if they are missing there.

  ## The interpreter

  A virtualenv runs on the interpreter it was built on, found at the same
  absolute path: the machine (or image) that runs the release needs the
  same Python at that path. The step prints it. Build the release with the
  interpreter the target has, by setting `SYNAPSE_BOOTSTRAP_PYTHON` (for
  example `/usr/bin/python3.11` in a Docker build whose runtime image is the
  same Debian release with `python3` installed). An interpreter that uv
  manages (`uv python install 3.12`) works the same way when it is installed
  at the same path on both machines (`UV_PYTHON_INSTALL_DIR`). When the
  interpreter is missing, workers fail to start with a `:startup_failed`
  error naming it.
  """

  alias Mix.Synapse.PythonEnv

  @doc "The release step: see the module documentation."
  @spec python(map()) :: map()
  def python(%{path: path, applications: applications} = release) do
    env = PythonEnv.declared()
    dir = Path.join(path, "synapse_python")

    opts = [
      dev: false,
      lock: :check,
      release: true,
      python: System.get_env("SYNAPSE_BOOTSTRAP_PYTHON")
    ]

    Mix.shell().info("* building the Python environment in #{Path.relative_to_cwd(dir)}")
    {_status, python} = PythonEnv.build(env, dir, opts)

    priv = synapse_priv(path, applications)
    # Left by versions of synapse_core that kept their environment in priv.
    File.rm_rf!(Path.join(priv, "python/.venv"))

    PythonEnv.generate_stubs(
      python,
      env.synapse_root,
      Path.join(priv, "python/synapse_python/_proto")
    )

    Mix.shell().info(
      "* the release runs Python workers on the interpreter in " <>
        "#{SynapseCore.Python.base_home(Path.join(dir, ".venv"))}: " <>
        "the machine that runs it needs the same Python at that path"
    )

    for_tarball(release, dir)
  end

  # Mix's `:tar` step archives only the release's own directories and its
  # overlays, so the environment is listed as one. The archive follows
  # symbolic links: `lib64`, a link to `lib` that uv adds, would put every
  # package in it twice, and Python finds them in `lib` without it.
  defp for_tarball(%{path: path, overlays: overlays} = release, dir) do
    lib64 = Path.join(dir, ".venv/lib64")

    with {:ok, %{type: :symlink}} <- File.lstat(lib64),
         {:ok, "lib"} <- File.read_link(lib64),
         do: File.rm!(lib64)

    %{release | overlays: Enum.uniq([Path.relative_to(dir, path) | overlays])}
  end

  defp synapse_priv(path, applications) do
    vsn = applications |> Map.fetch!(:synapse_core) |> Keyword.fetch!(:vsn) |> to_string()
    Path.join([path, "lib", "synapse_core-" <> vsn, "priv"])
  end
end
