defmodule Mix.Tasks.Synapse.Setup do
  @shortdoc "Creates the Python virtualenv for Synapse's workers"
  @moduledoc """
  Prepares the Python side of Synapse: creates the virtualenv at
  `priv/python/.venv`, installs the pinned packages of
  `priv/python/requirements.txt` into it, and generates the Python gRPC
  stubs from `proto/`.

      mix synapse.setup [--dev] [--python python3.11]

    * `--dev` - also installs the test and lint tools
      (`priv/python/requirements-dev.txt`).
    * `--python` - the interpreter that creates the virtualenv (Python 3.11
      or later). Defaults to `$SYNAPSE_BOOTSTRAP_PYTHON`, then `python3`.

  Safe to run again: packages are reinstalled only when the requirements
  changed, stubs only when the proto files did.
  """

  use Mix.Task

  @runtime_requirements "priv/python/requirements.txt"
  @dev_requirements "priv/python/requirements-dev.txt"

  @impl Mix.Task
  def run(args) do
    {opts, _} = OptionParser.parse!(args, strict: [dev: :boolean, python: :string])
    root = root()
    venv = Path.join(root, "priv/python/.venv")
    python = Path.join(venv, "bin/python")

    unless File.exists?(python), do: create_venv(venv, bootstrap_python(opts[:python]))

    requirements =
      Path.join(root, if(opts[:dev], do: @dev_requirements, else: @runtime_requirements))

    install(python, requirements, venv, root)
    generate_stubs(python, root)
    Mix.shell().info("Synapse's Python environment is ready: #{python}")
  end

  defp root do
    if Mix.Project.config()[:app] == :synapse_core,
      do: File.cwd!(),
      else: Mix.Project.deps_paths() |> Map.fetch!(:synapse_core)
  end

  defp bootstrap_python(explicit) do
    candidate = explicit || System.get_env("SYNAPSE_BOOTSTRAP_PYTHON") || "python3"

    python =
      System.find_executable(candidate) ||
        Mix.raise("Python not found: #{candidate}. Install Python 3.11 or later.")

    {version, 0} = System.cmd(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])

    [major, minor] =
      version |> String.trim() |> String.split(".") |> Enum.map(&String.to_integer/1)

    if {major, minor} < {3, 11} do
      Mix.raise("Synapse needs Python 3.11 or later; #{python} is #{String.trim(version)}")
    end

    python
  end

  defp create_venv(venv, python) do
    Mix.shell().info("Creating the Python virtualenv at #{venv}")

    cmd!(
      python,
      ["-m", "venv", venv],
      "creating the virtualenv (on Debian: apt-get install python3-venv)"
    )
  end

  defp install(python, requirements, venv, root) do
    # Hash of every requirements file, so that a change in the base file
    # also reinstalls a --dev environment.
    digest =
      [@runtime_requirements, @dev_requirements, requirements]
      |> Enum.map(&File.read!(Path.expand(&1, root)))
      |> then(&:erlang.md5(&1))
      |> Base.encode16()

    stamp = Path.join(venv, ".synapse-requirements")

    if File.read(stamp) != {:ok, digest <> Path.basename(requirements)} do
      Mix.shell().info("Installing #{Path.relative_to(requirements, root)} into the virtualenv")
      cmd!(python, ["-m", "pip", "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
      cmd!(python, ["-m", "pip", "install", "--quiet", "-r", requirements], "installing packages")
      File.write!(stamp, digest <> Path.basename(requirements))
    end
  end

  defp generate_stubs(python, root) do
    # Only our own contract: the health protocol comes with grpcio-health-checking.
    protos = Path.wildcard(Path.join(root, "proto/synapse/**/*.proto"))
    out = Path.join(root, "priv/python/synapse_python/_proto")
    outputs = Enum.map(protos, &stub_path(&1, root, out))

    if Mix.Utils.stale?(protos, outputs) do
      File.rm_rf!(out)
      File.mkdir_p!(out)

      cmd!(
        python,
        [
          "-m",
          "grpc_tools.protoc",
          "-I",
          Path.join(root, "proto"),
          "--python_out=" <> out,
          "--pyi_out=" <> out
        ] ++
          protos,
        "generating the Python stubs"
      )
    end
  end

  defp stub_path(proto, root, out) do
    relative = Path.relative_to(proto, Path.join(root, "proto"))
    Path.join(out, Path.rootname(relative) <> "_pb2.py")
  end

  defp cmd!(executable, args, what) do
    case System.cmd(executable, args, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("#{what} failed (exit status #{status})")
    end
  end
end
