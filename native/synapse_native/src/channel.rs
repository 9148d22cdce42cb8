//! Connections to workers: one tonic channel per worker, shared by every
//! call on it (HTTP/2 multiplexes them; cloning the client is cheap).

use rustler::{Atom, Encoder, Env, NifMap, Resource, ResourceArc, Term};
use synapse_client::proto::agent_service_client::AgentServiceClient;
use synapse_client::{Address, Error};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::atoms;
use crate::error::NifError;
use crate::runtime::RUNTIME;

/// A worker's channel. `closed` is cancelled when the worker is known to be
/// gone, which fails every call in flight on it at once.
pub struct ChannelResource {
    pub client: AgentServiceClient<Channel>,
    pub closed: CancellationToken,
    pub address: String,
}

#[rustler::resource_impl]
impl Resource for ChannelResource {}

#[derive(NifMap)]
pub struct ConnectOptions {
    /// Largest message, either way, in bytes.
    pub max_message_bytes: usize,
}

/// Creates the channel without connecting: the first call connects (and a
/// broken connection is re-established by the next call), so this never
/// waits and can run on a normal scheduler.
#[rustler::nif]
fn channel_connect(env: Env<'_>, address: String, options: ConnectOptions) -> Term<'_> {
    // Encoded here rather than returned: tonic's channel is not
    // `RefUnwindSafe`, which the NIF wrapper requires of return values.
    connect(address, options).map_err(NifError).encode(env)
}

fn connect(
    address: String,
    options: ConnectOptions,
) -> Result<ResourceArc<ChannelResource>, Error> {
    let _runtime = RUNTIME.enter();
    let client = synapse_client::connect_lazy(
        &Address::parse(&address)?,
        synapse_client::ConnectOptions {
            max_message_bytes: options.max_message_bytes,
        },
    )?;
    Ok(ResourceArc::new(ChannelResource {
        client,
        closed: CancellationToken::new(),
        address,
    }))
}

/// Marks the worker gone: every call in flight on the channel, and every
/// later one, answers `:worker_exited`.
#[rustler::nif]
fn channel_close(channel: ResourceArc<ChannelResource>) -> Atom {
    channel.closed.cancel();
    atoms::ok()
}
