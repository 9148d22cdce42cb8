//! The one tokio runtime every NIF call runs its asynchronous work on.

use once_cell::sync::Lazy;
use tokio::runtime::{Builder, Runtime};

/// Created on first use, never shut down: it lives as long as the VM has the
/// library loaded. Its threads are not BEAM schedulers, which is what lets
/// them send messages with `OwnedEnv::send_and_clear`.
pub static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    let mut builder = Builder::new_multi_thread();
    if let Some(threads) = std::env::var("SYNAPSE_TOKIO_THREADS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|&threads| threads > 0)
    {
        builder.worker_threads(threads);
    }
    builder
        .thread_name("synapse-tokio")
        .enable_all()
        .build()
        // Without a runtime the library cannot do anything; failing here means
        // the OS refused to create threads, which no caller could recover from.
        .expect("synapse_native: cannot start the tokio runtime")
});
