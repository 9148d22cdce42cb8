//! A worker's session: one long-lived `Session` stream per channel that
//! carries many small calls, each frame tagged with its call's id. A call
//! on it costs a frame each way, not an HTTP/2 stream and a gRPC call of
//! its own; on the Python side it is answered in the coroutine that reads
//! it, with no task per call.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Status;

use crate::proto::agent_service_client::AgentServiceClient;
use crate::proto::{session_frame, EchoReply, EchoRequest, SessionFrame};

/// A call waiting to go out on the session, and where its answer goes.
pub struct Pending {
    pub body: session_frame::Body,
    pub reply: oneshot::Sender<Result<session_frame::Body, Status>>,
}

pub type Sender = mpsc::UnboundedSender<Pending>;

/// Starts a session (on the current tokio runtime); it ends, failing its
/// calls in flight, when the stream breaks: the sender is then closed, and
/// its owner starts another.
pub fn start(
    client: AgentServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
) -> Sender {
    let (calls, queue) = mpsc::unbounded_channel();
    tokio::spawn(run(client, authorization, queue));
    calls
}

/// An echo on the session.
pub async fn echo(session: &Sender, payload: Vec<u8>) -> Result<EchoReply, Status> {
    let (reply, answer) = oneshot::channel();
    session
        .send(Pending {
            body: session_frame::Body::Echo(EchoRequest { payload }),
            reply,
        })
        .map_err(|_| Status::unavailable("the session ended"))?;
    match answer.await {
        Ok(Ok(session_frame::Body::EchoReply(reply))) => Ok(reply),
        Ok(Ok(_)) => Err(Status::internal(
            "the worker answered an echo with something else",
        )),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::unavailable("the session ended")),
    }
}

async fn run(
    mut client: AgentServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let (frames, outgoing) = mpsc::unbounded_channel::<SessionFrame>();
    let mut waiting: HashMap<u64, oneshot::Sender<Result<session_frame::Body, Status>>> =
        HashMap::new();
    let mut next_id: u64 = 0;
    let mut send = |pending: Pending, waiting: &mut HashMap<_, _>| {
        next_id += 1;
        waiting.insert(next_id, pending.reply);
        // The receiving end lives as long as the call below.
        let _ = frames.send(SessionFrame {
            id: next_id,
            body: Some(pending.body),
        });
    };

    // The worker answers the stream's headers with its first frame: calls
    // are queued while the stream opens.
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(outgoing));
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization);
    }
    let call = client.session(request);
    tokio::pin!(call);
    let mut incoming = loop {
        tokio::select! {
            pending = queue.recv() => match pending {
                Some(pending) => send(pending, &mut waiting),
                None => return,
            },
            opened = &mut call => match opened {
                Ok(response) => break response.into_inner(),
                Err(status) => return fail_all(waiting, &status),
            },
        }
    };

    loop {
        tokio::select! {
            pending = queue.recv() => match pending {
                Some(pending) => send(pending, &mut waiting),
                None => return,
            },
            frame = incoming.message() => match frame {
                Ok(Some(SessionFrame { id, body: Some(body) })) => {
                    if let Some(reply) = waiting.remove(&id) {
                        // The caller may have given up meanwhile.
                        let _ = reply.send(Ok(body));
                    }
                }
                Ok(Some(SessionFrame { body: None, .. })) => {
                    return fail_all(waiting, &Status::internal("the worker sent an empty session frame"));
                }
                Ok(None) => return fail_all(waiting, &Status::unavailable("the worker ended the session")),
                Err(status) => return fail_all(waiting, &status),
            },
        }
    }
}

fn fail_all(
    waiting: HashMap<u64, oneshot::Sender<Result<session_frame::Body, Status>>>,
    status: &Status,
) {
    for (_, reply) in waiting {
        let _ = reply.send(Err(status.clone()));
    }
}
