defmodule Mix.Tasks.Synapse.Gen.Bridge do
  @shortdoc "Generates a typed Elixir client and a gRPC server for a Python module"
  @moduledoc """
  Generates the Synapse Bridge of a Python module: its typed functions and
  Pydantic models become a `.proto`, a Python gRPC server wrapping the
  functions, and an Elixir client module with docs and typespecs.

      mix synapse.gen.bridge my_module [--function process_data ...] [--python-path py]
      mix synapse.gen.bridge --config bridges/my_module.json [--python-path py]

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
    * `--config FILE` - the bridge's configuration file (see below).
    * `--check` - write nothing; fail, listing them, if the generated files
      are missing or stale.

  The output is deterministic: the same Python source (and config) gives
  byte-identical files.

  ## Configuration

  A bridge may have a configuration file, in JSON:

      {
        "module": "my_module",
        "functions": {"process_data": {}, "add": {"on_loop": true}},
        "service": "Shop",
        "types": {
          "decimal.Decimal": {"proto": "string"},
          "uuid.UUID": {"proto": "string"}
        },
        "elixir": {
          "module": "MyApp.Shop",
          "functions": {"process_data": "greet"},
          "types": {
            "decimal.Decimal": {"module": "MyApp.Money", "encode": "to_string",
                                "decode": "parse!", "spec": "MyApp.Money.t()"}
          }
        }
      }

  Every key is optional:

    * `"module"` - the Python module (instead of the `MODULE` argument).
    * `"functions"` - the Python functions to export (instead of
      `--function`; default: every public function the module defines): a
      list of names, or an object of names to options. The one option is
      `"on_loop": true`, for a sync function the worker should call
      directly on its event loop instead of in a thread: it saves the thread
      hop of each call, but while the function runs the worker does nothing
      else (no other call, no health check, no cancellation), so it is only
      for quick functions that never block.
    * `"service"` - the gRPC service's name (default: the last part of the
      Python module, camelized: `MyModule`).
    * `"types"` - custom types: a Python type (`module.Class`) the Bridge does
      not map itself, and the protobuf scalar it travels as (`"string"`,
      `"bytes"`, `"int64"`, `"double"` or `"bool"`). Python converts it with
      Pydantic: an argument arrives as the scalar and is validated into the
      type (Pydantic reads a `Decimal` or a `UUID` from a string), a result is
      serialized by Pydantic to the scalar. A custom type cannot be a member
      of a union.
    * `"elixir"` - read by this task only:
      * `"module"` - the client module's name (instead of `--elixir-module`);
      * `"functions"` - Elixir names for Python functions, by Python name;
      * `"types"` - the Elixir side of custom types, by Python type: the
        functions of `"module"` that convert an Elixir value to the scalar
        (`"encode"`) and back (`"decode"`), and the Elixir typespec of the
        value (`"spec"`, default `term()`). They are checked when the client
        compiles, so the module must not be in the same file. An exception
        they raise ends the call with `{:error, %SynapseCore.Error{kind:
        :invalid_argument}}` naming the function. Without an entry, the
        value is the scalar itself (a `String.t()` for `"string"`).

  JSON because both generators read the file with what they have: Python's
  `json`, and Synapse's own JSON decoder in Elixir (YAML has a library on
  neither side; an Elixir term file cannot be read from Python). Each side
  checks the keys it owns and names the file and the key in its errors, e.g.
  `bridge config bridge.json: types["decimal.Decimal"].proto: expected one of
  string, bytes, int64, double, bool, got 'str'`.
  """

  use Mix.Task

  alias SynapseCore.Bridge.{Config, Generator}

  @switches [
    function: :keep,
    python_path: :keep,
    elixir_module: :string,
    config: :string,
    lib: :string,
    out: :string,
    check: :boolean
  ]

  @impl Mix.Task
  def run(args) do
    {opts, modules} = OptionParser.parse!(args, strict: @switches)

    module =
      case {modules, opts[:config]} do
        {[module], _config} ->
          module

        {[], config} when is_binary(config) ->
          nil

        _ ->
          Mix.raise(
            "usage: mix synapse.gen.bridge [MODULE] [--config FILE] [--function NAME ...] [--check]"
          )
      end

    case generate(module, opts) do
      {:ok, files} ->
        if opts[:check] do
          Mix.shell().info("The bridge is up to date.")
        else
          Enum.each(files, &Mix.shell().info("* wrote #{Path.relative_to_cwd(&1)}"))
        end

      {:error, message} ->
        Mix.raise(message)
    end
  end

  @doc """
  Generates (or, with `check: true`, checks) the bridge of `module` (`nil`
  when the config names it). Takes the options of the command line as a
  keyword list (`function:` and `python_path:` may repeat). Returns the paths
  written (or checked).
  """
  @spec generate(String.t() | nil, keyword()) :: {:ok, [Path.t()]} | {:error, String.t()}
  def generate(module, opts) do
    out = Keyword.get(opts, :out, "priv/synapse_bridge")
    # Unique on the machine (another generation may run at the same time).
    tmp =
      Path.join(
        System.tmp_dir!(),
        "synapse-bridge-#{System.pid()}-#{System.unique_integer([:positive])}"
      )

    try do
      with {:ok, config} <- config(opts[:config]),
           {:ok, python_module} <- python_module(module, config, opts[:config]),
           {:ok, elixir} <- elixir_options(module, config, opts),
           {:ok, python} <- interpreter(),
           :ok <- run_generator(python, module, opts, tmp),
           {:ok, client} <- render(python_module, elixir, Keyword.get(opts, :lib, "lib"), tmp) do
        files = [client | python_files(tmp, out)]
        if opts[:check], do: check(files), else: write(files)
      end
    after
      File.rm_rf(tmp)
    end
  end

  defp config(nil), do: {:ok, %{module: nil, elixir: []}}
  defp config(path), do: Config.read(path)

  defp python_module(nil, %{module: nil}, _path),
    do: {:error, "no Python module to bridge: give it, or a config that names it"}

  defp python_module(nil, %{module: module}, _path), do: {:ok, module}
  defp python_module(module, %{module: nil}, _path), do: {:ok, module}
  defp python_module(module, %{module: module}, _path), do: {:ok, module}

  defp python_module(module, %{module: other}, path),
    do:
      {:error,
       "the module is #{inspect(module)}, but the bridge config #{path} says #{inspect(other)}"}

  # What the Elixir generator is told: the config's elixir section, the
  # command line's --elixir-module (not both), the command that regenerates.
  defp elixir_options(module, config, opts) do
    case {opts[:elixir_module], config.elixir[:elixir_module]} do
      {name, other} when is_binary(name) and is_binary(other) ->
        {:error,
         "the Elixir module is given both by --elixir-module and by the bridge config's elixir.module"}

      {name, other} ->
        {:ok,
         Keyword.merge(config.elixir,
           elixir_module: name || other,
           regenerate: command_line(module, opts)
         )}
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
      ["-m", "synapse_python.bridge", "generate", "--out", tmp] ++
        if(module, do: ["--module", module], else: []) ++
        Enum.flat_map(Keyword.get_values(opts, :function), &["--function", &1]) ++
        if(config = opts[:config], do: ["--config", config], else: [])

    python_path = Enum.map(Keyword.get_values(opts, :python_path), &Path.expand/1)
    env = [{"PYTHONPATH", Enum.join(python_path ++ [SynapseCore.Python.package_dir()], ":")}]

    case System.cmd(python, args, env: env, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {output, _status} -> {:error, "the bridge generator failed:\n" <> String.trim(output)}
    end
  end

  # The Elixir client, from the IR and the descriptor set the Python side wrote.
  defp render(module, elixir, lib, tmp) do
    stem = String.replace(module, ".", "_")

    with {:ok, ir} <- Config.read_json(Path.join(tmp, "#{stem}.ir.json"), "the bridge IR"),
         descriptor = File.read!(Path.join(tmp, "#{stem}.desc")),
         {:ok, {name, source}} <- Generator.render(ir, descriptor, elixir) do
      {:ok, {Path.join(lib, Macro.underscore(name) <> ".ex"), source}}
    end
  end

  # The command that regenerates the client, as its doc shows it: what names
  # and shapes the bridge (not where things are on this machine).
  defp command_line(module, opts) do
    words =
      ["mix", "synapse.gen.bridge"] ++
        if(module, do: [module], else: []) ++
        Enum.flat_map(Keyword.get_values(opts, :function), &["--function", &1]) ++
        if(name = opts[:elixir_module], do: ["--elixir-module", name], else: []) ++
        if(config = opts[:config], do: ["--config", config], else: [])

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
