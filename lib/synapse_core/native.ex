defmodule SynapseCore.Native do
  # Stubs for the Rust NIF (native/synapse_native). Every function returns at
  # once. Calls that talk to a worker answer by message:
  #
  #   * `{:synapse_reply, tag, {:ok, value} | {:error, %SynapseCore.Error{}}}`
  #     for one-shot calls (agent_load, run_start), to the caller;
  #   * `{:synapse_event, tag, event}` for each event of a stream, then
  #     `{:synapse_event, tag, {:result, result} | {:error, error}}`, to the
  #     stream's receiver;
  #   * `{:synapse_tool_request, tag, request}` for each call of an Elixir
  #     tool, then `{:synapse_run_done, tag, {:ok, %SynapseCore.Usage{}} |
  #     {:error, %SynapseCore.Error{}}}` as the run answers, to the run's tool
  #     runner.
  #
  # A call is cancelled when its handle is cancelled, or when its caller (or
  # a stream's receiver, or a run's tool runner) exits; never when its handle
  # is garbage collected: the call holds its handle until it answers.
  #
  # Public modules wrap these; nothing here is part of the API.
  @moduledoc false

  @on_load :load_nif

  @doc false
  def load_nif do
    path = :synapse_core |> :code.priv_dir() |> Path.join("native/libsynapse_native")
    :erlang.load_nif(String.to_charlist(path), 0)
  end

  def channel_connect(_address, _options), do: :erlang.nif_error(:nif_not_loaded)
  # Takes any term and never raises: the token's only way into Rust.
  def channel_token(_token), do: :erlang.nif_error(:nif_not_loaded)
  def channel_close(_channel), do: :erlang.nif_error(:nif_not_loaded)
  def channel_load(_channel), do: :erlang.nif_error(:nif_not_loaded)

  # The lane's reader (SynapseCore.Channel.LaneReader).
  def lane_received(_inbound, _bytes), do: :erlang.nif_error(:nif_not_loaded)
  def lane_ended(_inbound, _reason), do: :erlang.nif_error(:nif_not_loaded)
  def lane_release(_inbound), do: :erlang.nif_error(:nif_not_loaded)

  # Probes: the worker's health service, and round trips with no agent.
  def probe_health(_channel, _tag, _service, _timeout), do: :erlang.nif_error(:nif_not_loaded)
  def probe_echo(_channel, _tag, _payload, _timeout), do: :erlang.nif_error(:nif_not_loaded)

  def probe_echo_stream(_channel, _tag, _payload, _count, _timeout, _window),
    do: :erlang.nif_error(:nif_not_loaded)

  def agent_load(_channel, _tag, _request, _timeout), do: :erlang.nif_error(:nif_not_loaded)

  def run_start(_channel, _tag, _request, _timeout), do: :erlang.nif_error(:nif_not_loaded)

  def run_start_dirty(_channel, _tag, _request, _timeout),
    do: :erlang.nif_error(:nif_not_loaded)

  # options: %{receiver: pid, runner: pid | nil, timeout: timeout,
  #            window: pos_integer | :infinity, reply: :stream | :unary}
  def run_stream_start(_channel, _tag, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  def run_stream_start_dirty(_channel, _tag, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  # A tool request's claim: the first run_tool_result given it answers.
  def run_tool_claim, do: :erlang.nif_error(:nif_not_loaded)

  # outcome: {:ok, term} | {:retry, message}; :ok | :claimed | {:error, error};
  # the dirty twin for large ones
  def run_tool_result(_handle, _request_id, _outcome, _claim),
    do: :erlang.nif_error(:nif_not_loaded)

  def run_tool_result_dirty(_handle, _request_id, _outcome, _claim),
    do: :erlang.nif_error(:nif_not_loaded)

  def run_ack(_handle, _count), do: :erlang.nif_error(:nif_not_loaded)

  # A stream's back-pressure so far: {waits for credit, nanoseconds waited}.
  def run_waits(_handle), do: :erlang.nif_error(:nif_not_loaded)
  # decision: {:approve, args | nil} | {:deny, message | nil}
  def run_approval_result(_handle, _request_id, _decision),
    do: :erlang.nif_error(:nif_not_loaded)

  # Bridge: a descriptor pool from a FileDescriptorSet, then calls by method
  # name ("package.Service/Method") with wire maps.
  def bridge_pool(_descriptor_set), do: :erlang.nif_error(:nif_not_loaded)

  def bridge_call(_channel, _pool, _tag, _method, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  def bridge_stream_start(_channel, _pool, _tag, _method, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  # their dirty twins, for requests that are not surely small
  def bridge_call_dirty(_channel, _pool, _tag, _method, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  def bridge_stream_start_dirty(_channel, _pool, _tag, _method, _request, _options),
    do: :erlang.nif_error(:nif_not_loaded)

  # :ok, or :over when the call had answered already (nothing more comes)
  def run_cancel(_handle), do: :erlang.nif_error(:nif_not_loaded)
  def run_answered(_handle), do: :erlang.nif_error(:nif_not_loaded)

  # The JSON conversion of every payload; the dirty twins for large ones.
  def json_encode(_term), do: :erlang.nif_error(:nif_not_loaded)
  def json_encode_dirty(_term), do: :erlang.nif_error(:nif_not_loaded)
  def json_decode(_binary), do: :erlang.nif_error(:nif_not_loaded)
  def json_decode_dirty(_binary), do: :erlang.nif_error(:nif_not_loaded)

  # A history's messages from an index on, as {:ok, %SynapseCore.Messages{}}.
  def messages_slice(_json, _from), do: :erlang.nif_error(:nif_not_loaded)

  # SIGKILL to an OS process, or (group: true) its process group: :ok | :not_found.
  def shepherd_kill(_os_pid, _group), do: :erlang.nif_error(:nif_not_loaded)

  # Failure injection for tests: where is :nif or :reply. Only the :test
  # build of the NIF has it (the `test-nifs` cargo feature); elsewhere this
  # stub stays, and raises.
  def debug_panic(_where, _tag), do: :erlang.nif_error(:nif_not_loaded)

  # Test-only too: a call's answered note unset now and set again `ms` later
  # (the moment between the answer's send and its note).
  def debug_answered_later(_handle, _ms), do: :erlang.nif_error(:nif_not_loaded)
end
