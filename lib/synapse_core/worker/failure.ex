defmodule SynapseCore.Worker.Failure do
  @moduledoc false
  # Why a worker failed, as the `SynapseCore.Error` its starter and its
  # callers get, and whether retrying can help: a failure that cannot be
  # fixed by starting again is *permanent* (`details.permanent`), and fails
  # a first start at once and every call while it lasts.

  alias SynapseCore.Error
  alias SynapseCore.Shepherd.Protocol

  # Exit codes of `python -m synapse_python.worker` that retrying cannot
  # fix: a bad command line, and a worker that failed before it was ready
  # (an agent or bridge that does not load, ...); and the shepherd's own
  # for a program that cannot be started.
  @permanent_exit_codes [2, 78, 127]

  @doc "Whether retrying cannot fix `error`."
  @spec permanent?(Error.t()) :: boolean()
  def permanent?(%Error{kind: kind}) when kind in [:unauthenticated, :tls_error], do: true
  def permanent?(%Error{details: %{permanent: true}}), do: true
  def permanent?(_error), do: false

  @doc "`error`, marked permanent, with `reason` unless it has one."
  @spec permanent(Error.t(), atom()) :: Error.t()
  def permanent(%Error{} = error, reason) do
    %{error | details: error.details |> Map.put(:permanent, true) |> Map.put_new(:reason, reason)}
  end

  @doc """
  A failed `LoadAgent` (or a remote bridge's first health check), for the
  worker of `source`.
  """
  @spec load(Error.t(), SynapseCore.Agent.Options.source(), pos_integer() | nil) :: Error.t()
  def load(%Error{kind: :worker_exited}, _source, os_pid) do
    worker("the worker exited while loading the agent", os_pid)
  end

  # Refused at the door: the error's own kind tells why.
  def load(%Error{kind: kind} = error, _source, _os_pid)
      when kind in [:unauthenticated, :tls_error],
      do: error

  # A remote worker without the bridge: its health service does not know it.
  def load(%Error{kind: :not_found}, {:bridge, module}, _os_pid) do
    permanent(
      Error.new(
        :startup_failed,
        "the worker does not serve the bridge of #{module} " <>
          "(start it with `python -m synapse_python.worker --bridge #{module}`)"
      ),
      :not_found
    )
  end

  # Not up yet: retried.
  def load(%Error{kind: kind} = error, _source, _os_pid) when kind in [:unavailable, :timeout],
    do: error

  def load(%Error{} = error, source, _os_pid) do
    what =
      case source do
        {:ref, ref} -> "cannot load agent #{inspect(ref)}"
        {:spec, _} -> "cannot build the agent"
        {:bridge, module} -> "cannot reach the bridge of #{module}"
      end

    python = if type = error.details[:type], do: "#{type}: ", else: ""

    permanent(
      Error.new(:startup_failed, "#{what}: #{python}#{error.message}", error.details),
      error.kind
    )
  end

  @doc """
  The end of a worker, as its shepherd reported it (see
  `SynapseCore.Shepherd`): a failed start, or a serving worker that exited.
  """
  @spec exited(SynapseCore.Shepherd.exit(), boolean(), pos_integer() | nil) :: Error.t()
  def exited(exit, true = _starting?, os_pid) do
    message =
      case exit.status do
        nil -> exit.message
        status -> "the worker #{Protocol.describe_exit(status)} before it was ready"
      end

    error = worker(message, os_pid, exit.output, exit.status)

    case exit.status do
      {:code, code} when code in @permanent_exit_codes -> permanent(error, :exit_status)
      _other -> error
    end
  end

  # While serving, the worker's output was logged as it came: the message
  # need not repeat it.
  def exited(exit, false = _starting?, os_pid) do
    %{worker(exit.message, os_pid, [], exit.status) | kind: :worker_exited}
  end

  @doc "A worker that could not start, with its last lines of output."
  @spec worker(String.t(), pos_integer() | nil, [String.t()], Protocol.exit_status() | nil) ::
          Error.t()
  def worker(message, os_pid, output \\ [], status \\ nil) do
    hint = if output == [], do: "", else: "\n" <> Enum.join(output, "\n")

    details =
      %{output: output}
      |> put_if(:exit_status, status)
      |> put_if(:os_pid, os_pid)

    Error.new(:startup_failed, message <> hint, details)
  end

  defp put_if(map, _key, nil), do: map
  defp put_if(map, key, value), do: Map.put(map, key, value)
end
