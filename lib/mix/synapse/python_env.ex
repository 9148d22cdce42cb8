defmodule Mix.Synapse.PythonEnv do
  @moduledoc false
  # Builds the Python environment of an application with uv: shared by
  # `mix synapse.setup` (the development environment, under the app's build
  # directory) and `SynapseCore.Release` (the one a release carries).
  #
  # The application declares packages in its config; Synapse's own runtime
  # pins come from `priv/python/requirements.txt`. Both become the
  # dependencies of a generated `pyproject.toml` (dev packages a `dev`
  # dependency group), which uv locks into the application's `python.lock`
  # (uv's lock format) and installs.

  @lock_file "python.lock"
  @stamp ".synapse-stamp"

  @typedoc "What to build: everything is derived from the config and the lock."
  @type t :: %{
          name: String.t(),
          synapse_root: Path.t(),
          lock: Path.t(),
          packages: [String.t()],
          dev_packages: [String.t()]
        }

  @doc "The environment the current Mix project declares."
  @spec declared() :: t()
  def declared do
    Mix.Task.run("loadconfig")
    app = Mix.Project.config()[:app]
    synapse_root = synapse_root()

    %{
      name: app |> to_string() |> String.replace("_", "-"),
      synapse_root: synapse_root,
      lock: Path.join(Path.dirname(Mix.Project.project_file()), @lock_file),
      packages: synapse_pins(synapse_root) ++ config_list(:python_packages),
      dev_packages: config_list(:python_dev_packages)
    }
  end

  @doc "The directory of the environment of the current Mix environment."
  @spec build_dir() :: Path.t()
  def build_dir, do: Path.join(Mix.Project.build_path(), "synapse_python")

  @doc """
  Writes the project into `dir`, brings the application's lock up to date
  (or checks it, with `lock: :check`) and installs the environment into
  `dir/.venv`. Does nothing when the same inputs were installed before.

  Options: `:dev` (install the dev packages), `:python` (the interpreter
  request given to uv, or nil for uv's own choice), `:lock` (`:update`,
  `:check` or `:upgrade`), `:release` (a relocatable environment of copied,
  compiled files), `:quiet`.
  """
  @spec build(t(), Path.t(), keyword()) :: {:ok | :noop, Path.t()}
  def build(env, dir, opts) do
    venv = Path.join(dir, ".venv")
    python = Path.join(venv, "bin/python")
    File.mkdir_p!(dir)
    write_if_changed(Path.join(dir, "pyproject.toml"), pyproject(env))

    if File.read(Path.join(venv, @stamp)) == {:ok, stamp(env, dir, opts)} and
         File.exists?(python) do
      {:noop, python}
    else
      uv = uv!()
      lock!(uv, env, dir, opts)
      sync!(uv, dir, venv, opts)
      # After locking: the stamp covers the lock as it is now.
      File.write!(Path.join(venv, @stamp), stamp(env, dir, opts))
      {:ok, python}
    end
  end

  @doc "Generates the Python gRPC stubs of `proto/` into `out` when stale."
  @spec generate_stubs(Path.t(), Path.t(), Path.t()) :: :ok | :noop
  def generate_stubs(python, synapse_root, out) do
    # Only our own contract: the health protocol comes with grpcio-health-checking.
    proto_root = Path.join(synapse_root, "proto")
    protos = Path.wildcard(Path.join(proto_root, "synapse/**/*.proto"))

    outputs =
      Enum.map(protos, fn proto ->
        Path.join(out, Path.rootname(Path.relative_to(proto, proto_root)) <> "_pb2.py")
      end)

    if Mix.Utils.stale?(protos, outputs) do
      File.rm_rf!(out)
      File.mkdir_p!(out)

      args = [
        "-m",
        "grpc_tools.protoc",
        "-I",
        proto_root,
        "--python_out=" <> out,
        "--pyi_out=" <> out
      ]

      cmd!(python, args ++ protos, [], "generating the Python gRPC stubs")
      :ok
    else
      :noop
    end
  end

  @doc "Where synapse_core's sources are: this project, or the dependency."
  @spec synapse_root() :: Path.t()
  def synapse_root do
    if Mix.Project.config()[:app] == :synapse_core,
      do: Path.dirname(Mix.Project.project_file()),
      else: Map.fetch!(Mix.Project.deps_paths(), :synapse_core)
  end

  @doc """
  The uv executable: `$SYNAPSE_UV`, `uv` on PATH, or where
  `python3 -m pip install --user uv` puts it.
  """
  @spec uv!() :: Path.t()
  def uv! do
    case System.get_env("SYNAPSE_UV") do
      nil ->
        Enum.find([System.find_executable("uv"), Path.expand("~/.local/bin/uv")], &executable?/1) ||
          Mix.raise("""
          uv is needed to build the Python environment and was not found.
          Install it from PyPI:

              python3 -m pip install --user uv      # or: pipx install uv

          then run the command again (or set SYNAPSE_UV to its path).
          """)

      uv ->
        if executable?(uv),
          do: uv,
          else: Mix.raise("SYNAPSE_UV is #{inspect(uv)}, which is not an executable file")
    end
  end

  defp executable?(path) do
    match?(
      {:ok, %File.Stat{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0,
      path && File.stat(path)
    )
  end

  @doc "Runs a command, streaming its output, and raises when it fails."
  @spec cmd!(Path.t(), [String.t()], [{String.t(), String.t()}], String.t()) :: :ok
  def cmd!(executable, args, env, what) do
    case System.cmd(executable, args, env: env, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("#{what} failed (exit status #{status})")
    end
  end

  defp lock!(uv, env, dir, opts) do
    project_lock = Path.join(dir, "uv.lock")

    case File.read(env.lock) do
      {:ok, content} -> write_if_changed(project_lock, content)
      {:error, :enoent} -> File.rm_rf!(project_lock)
    end

    {flags, what} =
      case Keyword.get(opts, :lock, :update) do
        :update -> {[], "locking the Python packages"}
        :upgrade -> {["--upgrade"], "upgrading the Python packages"}
        :check -> {["--locked"], "checking #{Path.basename(env.lock)}"}
      end

    info(opts, "==> #{what} (#{Path.relative_to_cwd(env.lock)})")

    args = ["lock", "--project", dir] ++ uv_flags(opts) ++ flags

    if flags == ["--locked"] do
      # uv's own words go into the error rather than before it.
      case System.cmd(uv, args, stderr_to_stdout: true) do
        {_, 0} ->
          :ok

        {output, _status} ->
          Mix.raise("""
          #{Path.relative_to_cwd(env.lock)} is missing or does not match the configured \
          Python packages (config :synapse_core, :python_packages / :python_dev_packages). \
          Run `mix synapse.setup` and commit #{Path.basename(env.lock)}.
          uv said: #{String.trim(output)}\
          """)
      end
    else
      cmd!(uv, args, [], what)
    end

    updated = File.read!(project_lock)

    if File.read(env.lock) != {:ok, updated} do
      File.write!(env.lock, updated)
      info(opts, "==> wrote #{Path.relative_to_cwd(env.lock)} (commit it with your code)")
    end
  end

  defp sync!(uv, dir, venv, opts) do
    release? = Keyword.get(opts, :release, false)
    info(opts, "==> installing the Python packages into #{Path.relative_to_cwd(venv)}")

    if release? do
      # Scripts that find their interpreter relative to themselves, so the
      # release can live anywhere.
      File.rm_rf!(venv)
      venv_args = ["venv", "--relocatable", "--quiet", venv] ++ uv_flags(opts)
      cmd!(uv, venv_args, [], "creating the Python environment")
    end

    args =
      ["sync", "--project", dir, "--frozen", "--no-install-project"] ++
        if(Keyword.get(opts, :dev, false), do: [], else: ["--no-dev"]) ++
        if(release?, do: ["--link-mode", "copy", "--compile-bytecode"], else: []) ++
        uv_flags(opts)

    cmd!(uv, args, [{"UV_PROJECT_ENVIRONMENT", venv}], "installing the Python packages")
  end

  defp uv_flags(opts) do
    quiet = if Keyword.get(opts, :quiet, false), do: ["--quiet"], else: []

    case Keyword.get(opts, :python) do
      nil -> quiet
      python -> ["--python", python | quiet]
    end
  end

  # Everything the installed environment depends on; the lock is read from
  # the application, so a `git pull` that changes it reinstalls.
  defp stamp(env, dir, opts) do
    lock = if File.exists?(env.lock), do: File.read!(env.lock), else: ""

    [
      File.read!(Path.join(dir, "pyproject.toml")),
      lock,
      inspect(Keyword.take(opts, [:dev, :python, :release]))
    ]
    |> :erlang.md5()
    |> Base.encode16(case: :lower)
  end

  @doc false
  @spec pyproject(t()) :: String.t()
  def pyproject(env) do
    """
    # Generated by synapse_core from `config :synapse_core, :python_packages` and
    # `:python_dev_packages` and Synapse's own pins; edit those, not this file.
    [project]
    name = #{toml_string(env.name <> "-python")}
    version = "0"
    requires-python = ">=3.11"
    dependencies = #{toml_list(env.packages)}

    [dependency-groups]
    dev = #{toml_list(env.dev_packages)}

    [tool.uv]
    package = false
    """
  end

  defp toml_list([]), do: "[]"

  defp toml_list(items) do
    "[\n" <> Enum.map_join(items, "", &"  #{toml_string(&1)},\n") <> "]"
  end

  defp toml_string(value) do
    escaped = value |> String.replace("\\", "\\\\") |> String.replace("\"", "\\\"")
    "\"" <> escaped <> "\""
  end

  # Synapse's runtime pins: requirement lines, comments and blanks skipped.
  defp synapse_pins(synapse_root) do
    synapse_root
    |> Path.join("priv/python/requirements.txt")
    |> File.read!()
    |> String.split("\n")
    |> Enum.map(&(&1 |> String.replace(~r/#.*/, "") |> String.trim()))
    |> Enum.reject(&(&1 == ""))
  end

  defp config_list(key) do
    case Application.get_env(:synapse_core, key, []) do
      list when is_list(list) ->
        Enum.map(list, fn
          item when is_binary(item) and item != "" ->
            if String.contains?(item, ["\n", "\r"]),
              do: Mix.raise("config :synapse_core, #{inspect(key)}: a requirement has a newline"),
              else: item

          item ->
            Mix.raise(
              "config :synapse_core, #{inspect(key)} must be a list of requirement strings " <>
                "(such as \"pydantic-ai-slim[anthropic]\"), got an item: #{inspect(item)}"
            )
        end)

      other ->
        Mix.raise(
          "config :synapse_core, #{inspect(key)} must be a list of requirement strings, " <>
            "got: #{inspect(other)}"
        )
    end
  end

  defp write_if_changed(path, content) do
    if File.read(path) != {:ok, content}, do: File.write!(path, content)
  end

  defp info(opts, message) do
    unless Keyword.get(opts, :quiet, false), do: Mix.shell().info(message)
  end
end
