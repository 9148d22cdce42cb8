defmodule SynapseCore.Python do
  @moduledoc """
  Where the Python interpreter for workers comes from, and the environment
  workers run with.

  ## The interpreter

  The first of these that is set wins:

    1. the agent's `:python` option;
    2. the application environment: `config :synapse_core, python: "/path/to/python"`
       (set it in `config/runtime.exs` to choose it when a release starts);
    3. the `SYNAPSE_PYTHON` environment variable;
    4. the environment `mix synapse.setup` builds for the application, in
       `_build/<MIX_ENV>/synapse_python/.venv`, or, in a release, the one
       `SynapseCore.Release` puts in the release's `synapse_python/.venv`
       (see `env_dir/0`).

  Whatever interpreter is used needs the packages of synapse_core's
  `priv/python/requirements.txt` installed, and those of the application's
  agents.

  ## Python paths

  The `:python_path` of an agent lists directories put before Synapse's own
  package on the worker's `PYTHONPATH`. An entry is either a path (relative
  ones are relative to the current directory when the agent starts) or
  `{app, path}`: `path` inside the directory of the OTP application `app`,
  resolved when each worker starts, so that it is right wherever a release
  is installed. `{:my_app, "priv/python"}` is the usual place for an
  application's own agents.

  ## The environment

  Workers do not inherit the BEAM's environment: secrets the BEAM process
  holds stay there unless asked for. A worker gets only

    * these variables, when the BEAM has them: #{Enum.join(["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"], ", ")};
    * `PYTHONPATH`: the agent's `:python_path` directories, then Synapse's
      own Python package;
    * `PYTHONUNBUFFERED=1`, so output reaches the logs line by line;
    * the agent's `:env` option: `{"NAME", "value"}` pairs set a variable,
      a bare `"NAME"` passes the BEAM's own value of `NAME` through (e.g.
      `env: ["OPENAI_API_KEY"]`).
  """

  alias SynapseCore.Error

  @inherited ~w(PATH HOME USER LOGNAME LANG LC_ALL LC_CTYPE TZ TMPDIR SSL_CERT_FILE SSL_CERT_DIR
                HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy)

  @typedoc "An entry of an agent's `:python_path`: a directory, or one inside an OTP application."
  @type path_entry :: String.t() | {atom(), String.t()}

  @typedoc "The `:env` option of an agent."
  @type env_option :: [String.t() | {String.t(), String.t()}] | %{String.t() => String.t()}

  @doc "The directory holding the `synapse_python` package."
  @spec package_dir() :: String.t()
  def package_dir, do: Path.join(priv_dir(), "python")

  @doc """
  The environment built by `mix synapse.setup` (or carried by a release).

  It sits next to the directory of compiled applications: under
  `_build/<MIX_ENV>/` in a Mix project, at the root of a release.
  """
  @spec env_dir() :: String.t()
  def env_dir do
    :synapse_core
    |> :code.lib_dir()
    |> to_string()
    |> Path.join("../../synapse_python/.venv")
    |> Path.expand()
  end

  @doc """
  Resolves the interpreter, `explicit` being the agent's `:python` option.
  """
  @spec interpreter(String.t() | nil) :: {:ok, String.t()} | {:error, Error.t()}
  def interpreter(explicit \\ nil) do
    candidate =
      explicit || Application.get_env(:synapse_core, :python) ||
        System.get_env("SYNAPSE_PYTHON")

    case candidate do
      nil -> env_interpreter(env_dir())
      path -> check_interpreter(path)
    end
  end

  @doc false
  @spec env_interpreter(String.t()) :: {:ok, String.t()} | {:error, Error.t()}
  def env_interpreter(env_dir) do
    path = Path.join(env_dir, "bin/python")

    cond do
      File.exists?(path) and base_present?(env_dir) ->
        {:ok, path}

      # A virtualenv runs on the interpreter it was built on: a release
      # moved to a machine that lacks it has a dangling link to it, or, when
      # it was installed from a tarball (which follows links), a copy of its
      # executable that finds no standard library.
      File.exists?(path) or match?({:ok, %{type: :symlink}}, File.lstat(path)) ->
        {:error,
         Error.new(
           :startup_failed,
           "the Python environment at #{env_dir} was built on the interpreter in " <>
             "#{base_home(env_dir)}, which is missing on this machine: install the same " <>
             "Python version there, or set `config :synapse_core, python: ...` or SYNAPSE_PYTHON"
         )}

      true ->
        {:error,
         Error.new(
           :startup_failed,
           "no Python interpreter configured and no Python environment at #{env_dir}: " <>
             "run `mix synapse.setup` (a release gets one from the release step " <>
             "&SynapseCore.Release.python/1), or set the :python option, " <>
             "`config :synapse_core, python: ...` or SYNAPSE_PYTHON"
         )}
    end
  end

  # Whether the interpreter a virtualenv names in its pyvenv.cfg is there
  # (true when it names none).
  defp base_present?(env_dir) do
    case home(env_dir) do
      {:ok, home} -> File.dir?(home)
      :none -> true
    end
  end

  @doc false
  # The directory of the interpreter a virtualenv was built on.
  @spec base_home(String.t()) :: String.t()
  def base_home(env_dir) do
    case home(env_dir) do
      {:ok, home} -> home
      :none -> "(no home in #{Path.join(env_dir, "pyvenv.cfg")})"
    end
  end

  defp home(env_dir) do
    with {:ok, cfg} <- File.read(Path.join(env_dir, "pyvenv.cfg")),
         [_, home] <- Regex.run(~r/^home\s*=\s*(.+)$/m, cfg) do
      {:ok, String.trim(home)}
    else
      _ -> :none
    end
  end

  defp check_interpreter(path) do
    resolved = if String.contains?(path, "/"), do: path, else: System.find_executable(path)

    if resolved && File.exists?(resolved) do
      {:ok, resolved}
    else
      {:error, Error.new(:startup_failed, "Python interpreter not found: #{path}")}
    end
  end

  @doc """
  Validates an entry of an agent's `:python_path`: a relative path is
  expanded against the current directory, `{app, path}` is kept as it is (it
  is resolved when a worker starts) and must name an application in the code
  path.

      iex> SynapseCore.Python.cast_path_entry("/app/py")
      {:ok, "/app/py"}
      iex> SynapseCore.Python.cast_path_entry({:synapse_core, "priv/python"})
      {:ok, {:synapse_core, "priv/python"}}
      iex> SynapseCore.Python.cast_path_entry({:no_such_app, "priv/python"})
      {:error, "names the application :no_such_app, which is not in the code path"}
  """
  @spec cast_path_entry(term()) :: {:ok, path_entry()} | {:error, String.t()}
  def cast_path_entry(entry) do
    case entry do
      {app, path} when is_atom(app) and is_binary(path) ->
        cond do
          not os_path?(path) -> {:error, "expected a path without NUL bytes in #{inspect(entry)}"}
          :code.lib_dir(app) == {:error, :bad_name} -> {:error, not_in_code_path(app)}
          true -> {:ok, entry}
        end

      path when is_binary(path) ->
        if os_path?(path),
          do: {:ok, Path.expand(path)},
          else: {:error, "expected a path without NUL bytes"}

      _other ->
        {:error, "expected a path or an {app, path} tuple"}
    end
  end

  defp os_path?(path),
    do: path != "" and String.valid?(path) and not String.contains?(path, <<0>>)

  defp not_in_code_path(app),
    do: "names the application #{inspect(app)}, which is not in the code path"

  @doc """
  The directory a `:python_path` entry names, now: `{app, path}` is `path`
  inside the application's directory wherever it is installed.

      iex> SynapseCore.Python.resolve_path("/app/py")
      "/app/py"
      iex> SynapseCore.Python.resolve_path({:synapse_core, "priv/python"}) == SynapseCore.Python.package_dir()
      true
  """
  @spec resolve_path(path_entry()) :: String.t()
  def resolve_path({app, path}), do: Application.app_dir(app, path)
  def resolve_path(path) when is_binary(path), do: path

  @doc """
  Builds a worker's environment from the BEAM's (`system`), the agent's
  `:python_path` and its `:env` option.

      iex> env = SynapseCore.Python.worker_env(%{"PATH" => "/bin", "SECRET" => "x", "TOKEN" => "t"},
      ...>   ["/app/py"], [{"MODE", "dev"}, "TOKEN"], "/synapse/python")
      iex> Enum.sort(env)
      [{"MODE", "dev"}, {"PATH", "/bin"}, {"PYTHONPATH", "/app/py:/synapse/python"},
       {"PYTHONUNBUFFERED", "1"}, {"TOKEN", "t"}]
  """
  @spec worker_env(%{String.t() => String.t()}, [path_entry()], env_option(), String.t()) ::
          [{String.t(), String.t()}]
  def worker_env(system, python_path, env_option, package_dir \\ package_dir()) do
    inherited = Map.take(system, @inherited)

    base =
      Map.merge(inherited, %{
        "PYTHONPATH" => Enum.map_join(python_path ++ [package_dir], ":", &resolve_path/1),
        "PYTHONUNBUFFERED" => "1"
      })

    env_option
    |> Enum.reduce(base, fn
      # A value validated options keep out of sight (see SynapseCore.Agent.Options).
      {name, value}, acc when is_function(value, 0) -> Map.put(acc, to_string(name), value.())
      {name, value}, acc -> Map.put(acc, to_string(name), to_string(value))
      name, acc when is_binary(name) -> put_inherited(acc, system, name)
    end)
    |> Enum.to_list()
  end

  defp put_inherited(acc, system, name) do
    case Map.fetch(system, name) do
      {:ok, value} -> Map.put(acc, name, value)
      :error -> acc
    end
  end

  @doc false
  @spec priv_dir() :: String.t()
  def priv_dir, do: :synapse_core |> :code.priv_dir() |> to_string()
end
