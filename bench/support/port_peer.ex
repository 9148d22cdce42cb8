defmodule SynapseCore.Bench.PortPeer do
  @moduledoc false
  # The BEAM side of the path benchmarks' Port baselines: one Python process
  # (bench/python/port_server.py) behind an Erlang Port, owned by this
  # process, called as ErlPort's instances are called. This is the
  # benchmark's own code, written in ErlPort's shape (ErlPort itself is not
  # used, nor copied):
  #
  #   * `:etf`, "ErlPort-shaped: Port + packet 4 + ETF": `{:packet, 4}`
  #     framing and Erlang's external term format both ways;
  #   * `:jsonl`: one compact JSON object per line both ways.
  #
  # Callers send their call to this process, which numbers it, writes it to
  # the port and answers the caller when the reply with that number comes
  # back; calls from many callers are pipelined, the Python side runs them
  # one at a time. A streamed call (`stream/6`) is the same call whose
  # events the Python side sends before its result, each passed on to the
  # caller as it comes, as an ErlPort instance passes on the messages its
  # Python sends to an Erlang process. When the Python side calls back (a tool answered by the
  # BEAM, as ErlPort's Erlang callbacks are), the callback runs in a new
  # process that writes its answer to the port itself.

  use GenServer

  @line_bytes 1_048_576

  @type codec :: :etf | :jsonl

  @doc """
  Starts the Python side with `codec`; `callbacks` maps a name the Python
  side may call back to a one-argument function of the arguments' map.
  Returns once the Python side has answered a first call.
  """
  @spec start_link(codec(), %{String.t() => (map() -> term())}) :: {:ok, pid()}
  def start_link(codec, callbacks) when codec in [:etf, :jsonl] do
    {:ok, peer} = GenServer.start_link(__MODULE__, {codec, callbacks})
    {:ok, 3} = call(peer, "add", [1, 2])
    {:ok, peer}
  end

  @doc "Calls `function` of the Python side with `args`: `{:ok, value}` or `{:error, reason}`."
  @spec call(pid(), String.t(), list(), timeout()) :: {:ok, term()} | {:error, String.t()}
  def call(peer, function, args, timeout \\ 120_000) do
    GenServer.call(peer, {:call, function, args}, timeout)
  end

  @doc """
  Calls `function` of the Python side with `args`, folding each event it
  sends meanwhile into `acc` with `fun` (in the calling process, as each
  comes); answers `{reply, acc}`, `reply` as `call/4` answers.
  """
  @spec stream(pid(), String.t(), list(), acc, (term(), acc -> acc), timeout()) ::
          {{:ok, term()} | {:error, String.t()}, acc}
        when acc: term()
  def stream(peer, function, args, acc, fun, timeout \\ 120_000) do
    ref = make_ref()
    GenServer.cast(peer, {:stream, function, args, self(), ref})
    stream_events(ref, acc, fun, timeout)
  end

  defp stream_events(ref, acc, fun, timeout) do
    receive do
      {:port_event, ^ref, value} -> stream_events(ref, fun.(value, acc), fun, timeout)
      {:port_done, ^ref, reply} -> {reply, acc}
    after
      timeout -> exit({:timeout, {__MODULE__, :stream}})
    end
  end

  @doc "The Python process's OS pid."
  @spec os_pid(pid()) :: pos_integer()
  def os_pid(peer), do: GenServer.call(peer, :os_pid)

  @impl true
  def init({codec, callbacks}) do
    {:ok, python} = SynapseCore.Python.interpreter()
    root = Path.expand("../..", __DIR__)
    python_path = Enum.map_join(["bench/python", "bench/bridge"], ":", &Path.join(root, &1))

    port =
      Port.open(
        {:spawn_executable, python},
        [
          :binary,
          :exit_status,
          framing(codec),
          args: [Path.join(root, "bench/python/port_server.py"), Atom.to_string(codec)],
          env: [{~c"PYTHONPATH", String.to_charlist(python_path)}]
        ]
      )

    {:ok, %{port: port, codec: codec, callbacks: callbacks, next: 1, calls: %{}, partial: []}}
  end

  defp framing(:etf), do: {:packet, 4}
  defp framing(:jsonl), do: {:line, @line_bytes}

  @impl true
  def handle_call({:call, function, args}, from, state) do
    id = state.next
    true = Port.command(state.port, encode(state.codec, {:call, id, function, args}))
    {:noreply, %{state | next: id + 1, calls: Map.put(state.calls, id, from)}}
  end

  def handle_call(:os_pid, _from, state) do
    {:os_pid, os_pid} = Port.info(state.port, :os_pid)
    {:reply, os_pid, state}
  end

  @impl true
  def handle_cast({:stream, function, args, caller, ref}, state) do
    id = state.next
    true = Port.command(state.port, encode(state.codec, {:call, id, function, args}))
    calls = Map.put(state.calls, id, {:stream, caller, ref})
    {:noreply, %{state | next: id + 1, calls: calls}}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    case data do
      {:noeol, chunk} ->
        {:noreply, %{state | partial: [state.partial, chunk]}}

      {:eol, chunk} ->
        line = IO.iodata_to_binary([state.partial, chunk])
        {:noreply, handle_message(decode(:jsonl, line), %{state | partial: []})}

      frame when is_binary(frame) ->
        {:noreply, handle_message(decode(:etf, frame), state)}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    {:stop, {:python_exited, status}, state}
  end

  defp handle_message({kind, id, value}, state) when kind in [:result, :error] do
    reply = {if(kind == :result, do: :ok, else: :error), value}

    case Map.pop!(state.calls, id) do
      {{:stream, caller, ref}, calls} ->
        send(caller, {:port_done, ref, reply})
        %{state | calls: calls}

      {from, calls} ->
        GenServer.reply(from, reply)
        %{state | calls: calls}
    end
  end

  defp handle_message({:event, id, value}, state) do
    {:stream, caller, ref} = Map.fetch!(state.calls, id)
    send(caller, {:port_event, ref, value})
    state
  end

  defp handle_message({:callback, cid, name, args}, state) do
    %{port: port, codec: codec} = state
    function = Map.fetch!(state.callbacks, name)

    spawn_link(fn ->
      Port.command(port, encode(codec, {:callback_result, cid, function.(args)}))
    end)

    state
  end

  defp encode(:etf, message), do: :erlang.term_to_binary(message)

  defp encode(:jsonl, message) do
    object =
      case message do
        {:call, id, function, args} -> %{"id" => id, "call" => function, "args" => args}
        {:callback_result, cid, value} -> %{"callback" => cid, "result" => value}
      end

    {:ok, json} = SynapseCore.JSON.encode(object)
    [json, ?\n]
  end

  defp decode(:etf, frame), do: :erlang.binary_to_term(frame, [:safe])

  defp decode(:jsonl, line) do
    case SynapseCore.JSON.decode(line) do
      {:ok, %{"callback" => cid, "name" => name, "args" => args}} -> {:callback, cid, name, args}
      {:ok, %{"id" => id, "event" => value}} -> {:event, id, value}
      {:ok, %{"id" => id, "result" => value}} -> {:result, id, value}
      {:ok, %{"id" => id, "error" => reason}} -> {:error, id, reason}
    end
  end
end
