defmodule SynapseCore.Python do
  @moduledoc """
  Where the Python interpreter for workers comes from, and the environment
  workers run with.

  ## The interpreter

  The first of these that is set wins:

    1. the agent's `:python` option;
    2. the application environment: `config :synapse_core, python: "/path/to/python"`;
    3. the `SYNAPSE_PYTHON` environment variable;
    4. the virtualenv `mix synapse.setup` creates, `priv/python/.venv`.

  Whatever interpreter is used needs the packages of
  `priv/python/requirements.txt` installed.

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

  @typedoc "The `:env` option of an agent."
  @type env_option :: [String.t() | {String.t(), String.t()}] | %{String.t() => String.t()}

  @doc "The directory holding the `synapse_python` package."
  @spec package_dir() :: String.t()
  def package_dir, do: Path.join(priv_dir(), "python")

  @doc "The virtualenv `mix synapse.setup` manages."
  @spec venv_dir() :: String.t()
  def venv_dir, do: Path.join(package_dir(), ".venv")

  @doc """
  Resolves the interpreter, `explicit` being the agent's `:python` option.
  """
  @spec interpreter(String.t() | nil) :: {:ok, String.t()} | {:error, Error.t()}
  def interpreter(explicit \\ nil) do
    candidate =
      explicit || Application.get_env(:synapse_core, :python) ||
        System.get_env("SYNAPSE_PYTHON")

    case candidate do
      nil -> venv_interpreter()
      path -> check_interpreter(path)
    end
  end

  defp venv_interpreter do
    path = Path.join(venv_dir(), "bin/python")

    if File.exists?(path) do
      {:ok, path}
    else
      {:error,
       Error.new(
         :startup_failed,
         "no Python interpreter configured and no Synapse virtualenv at #{venv_dir()}: " <>
           "run `mix synapse.setup`, or set the :python option, " <>
           "`config :synapse_core, python: ...` or SYNAPSE_PYTHON"
       )}
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
  Builds a worker's environment from the BEAM's (`system`), the agent's
  `:python_path` and its `:env` option.

      iex> env = SynapseCore.Python.worker_env(%{"PATH" => "/bin", "SECRET" => "x", "TOKEN" => "t"},
      ...>   ["/app/py"], [{"MODE", "dev"}, "TOKEN"], "/synapse/python")
      iex> Enum.sort(env)
      [{"MODE", "dev"}, {"PATH", "/bin"}, {"PYTHONPATH", "/app/py:/synapse/python"},
       {"PYTHONUNBUFFERED", "1"}, {"TOKEN", "t"}]
  """
  @spec worker_env(%{String.t() => String.t()}, [String.t()], env_option(), String.t()) ::
          [{String.t(), String.t()}]
  def worker_env(system, python_path, env_option, package_dir \\ package_dir()) do
    inherited = Map.take(system, @inherited)

    base =
      Map.merge(inherited, %{
        "PYTHONPATH" => Enum.join(python_path ++ [package_dir], ":"),
        "PYTHONUNBUFFERED" => "1"
      })

    env_option
    |> Enum.reduce(base, fn
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
