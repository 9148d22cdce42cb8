defmodule Mix.Tasks.Synapse.Gen.Bridge do
  @shortdoc "Generates a typed Elixir client and a gRPC server for a Python module"
  @moduledoc """
  Generates the Synapse Bridge of a Python module: its typed functions and
  Pydantic models become a `.proto`, a Python gRPC server wrapping the
  functions, and an Elixir client module with docs and typespecs.

      mix synapse.gen.bridge my_module [--function process_data ...] [--python-path py]

  The Python side (`python -m synapse_python.bridge generate`) writes the
  intermediate representation (`my_module.ir.json`), the `.proto`, its
  descriptor set and the Python server to `priv/synapse_bridge/`, where the
  bridge's workers find them; this task then renders the Elixir client from
  the IR and the descriptor set, a short module of declarations (see
  `SynapseCore.Bridge.Client`), formatted, under `lib/` (`lib/my_module.ex`
  for `MyModule`). Serve the bridge with

      {SynapseCore.Bridge, name: :my_module, module: "my_module",
       python_path: ["priv/synapse_bridge", "py"]}

  Options:

    * `--function NAME` - a function to export (repeatable; default: every
      public function the module defines).
    * `--python-path DIR` - where the module is found (repeatable).
    * `--elixir-module Name` - the client module's name (default: the
      Python module camelized, `pkg.sub_mod` gives `Pkg.SubMod`).
    * `--lib DIR`, `--out DIR` - where the Elixir module and the rest go
      (defaults `lib`, `priv/synapse_bridge`).
    * `--check` - write nothing; fail, listing them, if the generated files
      are missing or stale.

  The output is deterministic: the same Python source gives byte-identical
  files.
  """

  use Mix.Task

  alias SynapseCore.Bridge.Generator

  @switches [
    function: :keep,
    python_path: :keep,
    elixir_module: :string,
    lib: :string,
    out: :string,
    check: :boolean
  ]

  @impl Mix.Task
  def run(args) do
    {opts, modules} = OptionParser.parse!(args, strict: @switches)

    module =
      case modules do
        [module] -> module
        _ -> Mix.raise("usage: mix synapse.gen.bridge MODULE [--function NAME ...] [--check]")
      end

    case generate(module, opts) do
      {:ok, files} ->
        if opts[:check] do
          Mix.shell().info("The bridge of #{module} is up to date.")
        else
          Enum.each(files, &Mix.shell().info("* wrote #{Path.relative_to_cwd(&1)}"))
        end

      {:error, message} ->
        Mix.raise(message)
    end
  end

  @doc """
  Generates (or, with `check: true`, checks) the bridge of `module`. Takes
  the options of the command line as a keyword list (`function:` and
  `python_path:` may repeat). Returns the paths written (or checked).
  """
  @spec generate(String.t(), keyword()) :: {:ok, [Path.t()]} | {:error, String.t()}
  def generate(module, opts) do
    out = Keyword.get(opts, :out, "priv/synapse_bridge")
    tmp = Path.join(System.tmp_dir!(), "synapse-bridge-#{System.unique_integer([:positive])}")

    try do
      with {:ok, python} <- interpreter(),
           :ok <- run_generator(python, module, opts, tmp),
           {:ok, elixir} <- render(module, opts, tmp) do
        files = [elixir | python_files(tmp, out)]
        if opts[:check], do: check(files), else: write(files)
      end
    after
      File.rm_rf(tmp)
    end
  end

  defp interpreter do
    case SynapseCore.Python.interpreter() do
      {:ok, python} -> {:ok, python}
      {:error, error} -> {:error, error.message}
    end
  end

  defp run_generator(python, module, opts, tmp) do
    args =
      ["-m", "synapse_python.bridge", "generate", "--module", module, "--out", tmp] ++
        Enum.flat_map(Keyword.get_values(opts, :function), &["--function", &1])

    python_path = Enum.map(Keyword.get_values(opts, :python_path), &Path.expand/1)
    env = [{"PYTHONPATH", Enum.join(python_path ++ [SynapseCore.Python.package_dir()], ":")}]

    case System.cmd(python, args, env: env, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {output, _status} -> {:error, "the bridge generator failed:\n" <> String.trim(output)}
    end
  end

  # The Elixir client, from the IR and the descriptor set the Python side wrote.
  defp render(module, opts, tmp) do
    stem = String.replace(module, ".", "_")

    with {:ok, ir} <- tmp |> Path.join("#{stem}.ir.json") |> File.read!() |> decode(),
         descriptor = File.read!(Path.join(tmp, "#{stem}.desc")),
         {:ok, {name, source}} <-
           Generator.render(ir, descriptor,
             elixir_module: opts[:elixir_module],
             regenerate: command_line(module, opts)
           ) do
      {:ok, {Path.join(Keyword.get(opts, :lib, "lib"), Macro.underscore(name) <> ".ex"), source}}
    end
  end

  defp decode(json) do
    case SynapseCore.JSON.decode(json) do
      {:ok, ir} -> {:ok, ir}
      {:error, error} -> {:error, "the bridge IR is not valid JSON: #{error.message}"}
    end
  end

  # The command that regenerates the client, as its doc shows it: what names
  # and shapes the bridge (not where things are on this machine).
  defp command_line(module, opts) do
    words =
      ["mix", "synapse.gen.bridge", module] ++
        Enum.flat_map(Keyword.get_values(opts, :function), &["--function", &1]) ++
        if(name = opts[:elixir_module], do: ["--elixir-module", name], else: [])

    Enum.join(words, " ")
  end

  defp python_files(tmp, out) do
    for file <- tmp |> File.ls!() |> Enum.sort() do
      {Path.join(out, file), File.read!(Path.join(tmp, file))}
    end
  end

  defp write(files) do
    for {path, content} <- files do
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, content)
      path
    end
    |> then(&{:ok, &1})
  end

  defp check(files) do
    stale =
      for {path, content} <- files, File.read(path) != {:ok, content} do
        if File.exists?(path), do: "#{path} (differs)", else: "#{path} (missing)"
      end

    case stale do
      [] -> {:ok, Enum.map(files, &elem(&1, 0))}
      _ -> {:error, "the generated bridge files are stale:\n  " <> Enum.join(stale, "\n  ")}
    end
  end
end
