//! Every way a call to a worker can fail, classified once.

use prost::Message;
use tonic::{Code, Status};

use crate::proto::{ErrorDetail, ErrorKind, RunFailure, RunState};

/// The trailing metadata key under which a worker sends an [`ErrorDetail`].
pub const DETAIL_KEY: &str = "synapse-error-bin";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The arguments cannot be sent (bad types, invalid UTF-8, data with no
    /// JSON form).
    #[error("{0}")]
    InvalidArgument(String),
    /// The worker answered with an error status.
    #[error("{message}")]
    Remote {
        kind: ErrorKind,
        message: String,
        code: Code,
        python_type: Option<String>,
        traceback: Option<String>,
        /// Structured data about the failure (JSON), e.g. a validation
        /// error's per-field errors.
        data: Option<Vec<u8>>,
        /// What the run had done when it failed, once it began: a
        /// cancelled or timed-out run's state as pydantic-ai kept it, any
        /// other failure's messages as `capture_run_messages()` recorded
        /// them (with no usage and no run id).
        run: Option<Box<RunState>>,
    },
    #[error("the call did not finish within its timeout")]
    Timeout,
    #[error("the call was cancelled")]
    Cancelled,
    #[error("the worker exited while the call was in flight")]
    WorkerExited,
    /// The worker cannot be reached (connection refused, socket gone).
    #[error("{0}")]
    Unavailable(String),
    /// The TLS handshake with a worker failed: its certificate is not valid
    /// for the name, not signed by the given CA, expired, ... Retrying does
    /// not help; the configuration must change.
    #[error("{0}")]
    Tls(String),
    /// Data beyond a limit Synapse sets (nesting depth, size).
    #[error("{0}")]
    LimitExceeded(String),
    /// A value the BEAM cannot hold exactly (NaN, an infinite float).
    #[error("{0}")]
    Unrepresentable(String),
    /// The worker answered something that does not follow the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A bug (a caught panic, an impossible state).
    #[error("{0}")]
    Internal(String),
}

/// The kinds a worker reports in its [`ErrorDetail`] are the proto's
/// [`ErrorKind`]: the one list of kinds, shared with the Python worker and
/// `SynapseCore.Error`. A kind this client does not know (a newer
/// worker's) falls back to the one the status code implies.
fn kind_from_detail(kind: i32) -> Option<ErrorKind> {
    ErrorKind::try_from(kind)
        .ok()
        .filter(|kind| *kind != ErrorKind::Unspecified)
}

/// The kind of a status that carries no detail of ours: one produced by
/// grpc itself (message too large, deadline) rather than by our handlers.
fn kind_from_code(code: Code) -> ErrorKind {
    match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::Cancelled => ErrorKind::Cancelled,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::Unknown => ErrorKind::PythonError,
        _ => ErrorKind::Internal,
    }
}

/// A kind's name as the Elixir side spells it (an atom's name):
/// `ERROR_KIND_NOT_FOUND` is `not_found`.
pub fn kind_name(kind: ErrorKind) -> String {
    let name = kind.as_str_name();
    name.strip_prefix("ERROR_KIND_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

impl Error {
    /// Classifies a status the server sent. Transport failures (no status
    /// from the server at all) are not handled here: see
    /// [`is_transport_failure`].
    pub fn from_status(status: &Status) -> Self {
        if is_client_deadline(status) {
            return Self::Timeout;
        }
        if status.code() == Code::DeadlineExceeded {
            return Self::Timeout;
        }
        let detail = status
            .metadata()
            .get_bin(DETAIL_KEY)
            .and_then(|value| value.to_bytes().ok())
            .and_then(|bytes| ErrorDetail::decode(bytes.as_ref()).ok());
        match detail {
            Some(detail) => Self::from_detail(detail, status.code(), status.message(), None),
            None => Self::Remote {
                kind: kind_from_code(status.code()),
                message: status.message().to_owned(),
                code: status.code(),
                python_type: None,
                traceback: None,
                data: None,
                run: None,
            },
        }
    }

    /// The failure a run ended with, in band (a `RunEvent`'s `failure`).
    pub fn from_failure(failure: RunFailure) -> Self {
        let detail = failure.error.unwrap_or_default();
        let code = Code::from(detail.code);
        let message = detail.message.clone();
        Self::from_detail(detail, code, &message, failure.state.map(Box::new))
    }

    fn from_detail(
        detail: ErrorDetail,
        code: Code,
        fallback_message: &str,
        run: Option<Box<RunState>>,
    ) -> Self {
        Self::Remote {
            kind: kind_from_detail(detail.kind).unwrap_or_else(|| kind_from_code(code)),
            message: if detail.message.is_empty() {
                fallback_message.to_owned()
            } else {
                detail.message
            },
            code,
            python_type: non_empty(detail.r#type),
            traceback: non_empty(detail.traceback),
            data: (!detail.data_json.is_empty()).then_some(detail.data_json),
            run,
        }
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::Remote { kind, .. } => *kind,
            Self::Timeout => ErrorKind::Timeout,
            Self::Cancelled => ErrorKind::Cancelled,
            Self::WorkerExited => ErrorKind::WorkerExited,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Tls(_) => ErrorKind::TlsError,
            Self::LimitExceeded(_) => ErrorKind::ResourceExhausted,
            Self::Unrepresentable(_) => ErrorKind::Unrepresentable,
            Self::Protocol(_) => ErrorKind::ProtocolError,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The error's kind, as the Elixir side spells it.
    pub fn kind_name(&self) -> String {
        kind_name(self.kind())
    }
}

/// True when tonic produced the status itself because the connection failed
/// (refused, reset, closed mid-call), as opposed to a status the worker sent.
/// A deadline tonic enforced itself is not a transport failure.
pub fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some() && !is_client_deadline(status)
}

/// The TLS failure behind a transport failure, if that is what it is: the
/// handshake refused the worker's certificate (or the worker refused ours).
pub fn tls_failure(status: &Status, address: &str) -> Option<Error> {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        // `io::Error::source` skips the error it wraps: look inside.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(Error::Tls(format!(
                    "the TLS handshake with the worker at {address} failed: {tls} \
                     (check the :tls option's :ca and :server_name)"
                )));
            }
        }
        source = error.source();
    }
    None
}

/// True when tonic cancelled the call because the request's own deadline
/// (its `grpc-timeout`) passed before the worker answered.
pub fn is_client_deadline(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A gRPC status code's snake_case name.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};

    fn status_with_detail(code: Code, detail: ErrorDetail) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(
            DETAIL_KEY,
            MetadataValue::from_bytes(&detail.encode_to_vec()),
        );
        Status::with_metadata(code, "status message", metadata)
    }

    #[test]
    fn detail_kind_and_python_fields_are_kept() {
        let status = status_with_detail(
            Code::FailedPrecondition,
            ErrorDetail {
                kind: ErrorKind::LoadFailed.into(),
                r#type: "ModuleNotFoundError".into(),
                message: "No module named 'nope'".into(),
                traceback: "Traceback ...".into(),
                data_json: br#"{"errors": []}"#.to_vec(),
                code: 0,
            },
        );
        let error = Error::from_status(&status);
        assert_eq!(
            error,
            Error::Remote {
                kind: ErrorKind::LoadFailed,
                message: "No module named 'nope'".into(),
                code: Code::FailedPrecondition,
                python_type: Some("ModuleNotFoundError".into()),
                traceback: Some("Traceback ...".into()),
                data: Some(br#"{"errors": []}"#.to_vec()),
                run: None,
            }
        );
        assert_eq!(error.kind_name(), "load_failed");
        assert_eq!(error.to_string(), "No module named 'nope'");
    }

    #[test]
    fn an_in_band_failure_keeps_its_code_and_the_run_state() {
        let state = RunState {
            messages_json: b"[]".to_vec(),
            message_count: 0,
            new_message_index: 0,
            usage: None,
            run_id: Some("r1".into()),
        };
        let error = Error::from_failure(RunFailure {
            error: Some(ErrorDetail {
                kind: ErrorKind::Timeout.into(),
                message: "the run timed out".into(),
                code: Code::DeadlineExceeded as i32,
                ..Default::default()
            }),
            state: Some(state.clone()),
        });
        assert_eq!(error.kind_name(), "timeout");
        match error {
            Error::Remote { code, run, .. } => {
                assert_eq!(code, Code::DeadlineExceeded);
                assert_eq!(run.as_deref(), Some(&state));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_detail_kind_falls_back_to_the_status_code() {
        let status = status_with_detail(
            Code::NotFound,
            ErrorDetail {
                kind: 9999,
                ..Default::default()
            },
        );
        match Error::from_status(&status) {
            Error::Remote { kind, message, .. } => {
                assert_eq!(kind, ErrorKind::NotFound);
                assert_eq!(message, "status message");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_malformed_detail_is_ignored() {
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(DETAIL_KEY, MetadataValue::from_bytes(b"\xff\xff\xff"));
        let status = Status::with_metadata(Code::Unknown, "boom", metadata);
        assert_eq!(Error::from_status(&status).kind_name(), "python_error");
    }

    #[test]
    fn deadlines_are_timeouts_and_a_server_cancel_keeps_its_message() {
        assert_eq!(
            Error::from_status(&Status::deadline_exceeded("late")),
            Error::Timeout
        );
        // Not the caller's own cancel: the worker cancelled the call, and
        // its message says why.
        let error = Error::from_status(&Status::cancelled("shutting down"));
        assert_eq!(error.kind_name(), "cancelled");
        assert_eq!(error.to_string(), "shutting down");
    }

    #[test]
    fn statuses_without_detail_map_by_code() {
        let cases = [
            (Code::ResourceExhausted, "resource_exhausted"),
            (Code::Unknown, "python_error"),
            (Code::Unimplemented, "internal"),
            (Code::InvalidArgument, "invalid_argument"),
            (Code::Unavailable, "unavailable"),
        ];
        for (code, expected) in cases {
            assert_eq!(
                Error::from_status(&Status::new(code, "m")).kind_name(),
                expected,
                "{code:?}"
            );
        }
    }

    #[test]
    fn server_statuses_are_not_transport_failures() {
        assert!(!is_transport_failure(&Status::unavailable("x")));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transport_failure(&Status::from_error(Box::new(io))));
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let status = Status::from_error(Box::new(io));
        let error = tls_failure(&status, "tcp://h:1").expect("a TLS failure");
        assert_eq!(error.kind_name(), "tls_error");
        assert!(error.to_string().contains("tcp://h:1"), "{error}");

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            tls_failure(&Status::from_error(Box::new(refused)), "tcp://h:1"),
            None
        );
    }

    #[test]
    fn tonic_enforced_deadlines_are_timeouts() {
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(!is_transport_failure(&status));
        assert_eq!(Error::from_status(&status), Error::Timeout);
    }

    #[test]
    fn every_code_has_a_snake_case_name() {
        for n in 0..=16 {
            let name = code_name(Code::from(n));
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
