//! Atoms the NIF encodes. Atoms are never created from data that crosses the
//! boundary (Python strings stay binaries); only these fixed ones exist.

rustler::atoms! {
    ok,
    error,
    nil,
    infinity,
    synapse_reply,
    synapse_event,
    result,
    text_delta,
    __struct__,
    __exception__,
    result_module = "Elixir.SynapseCore.Result",
    usage_module = "Elixir.SynapseCore.Usage",
    error_module = "Elixir.SynapseCore.Error",
    kind,
    message,
    details,

    // the fallback error kind; the others come from `synapse_client`'s tables
    internal,

    // keys of reply maps
    agent_id,
    name,
    output_kind,
    output,
    usage,
    messages,
    run_id,
    input_tokens,
    output_tokens,
    requests,
    tool_calls,
    cache_read_tokens,
    cache_write_tokens,
    type_ = "type",
    traceback,
    grpc_status,
}
