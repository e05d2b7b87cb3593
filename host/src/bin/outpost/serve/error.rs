//! Why a request was not answered with outputs, as both protocols say it:
//! an HTTP status with `{"error": "..."}`, or a gRPC status code.

use outpost_host::RunError;
use outpost_host::bindings::ErrorKind;
use outpost_host::error::StageError;

/// The classes of failure, each with its HTTP status and gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    BadRequest,
    Unauthorized,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    DeadlineExceeded,
    /// The client went away before its answer (nginx's 499): counted, never
    /// sent.
    ClientClosed,
    Internal,
}

impl Class {
    pub fn http(self) -> u16 {
        match self {
            Class::BadRequest => 400,
            Class::Unauthorized => 401,
            Class::NotFound => 404,
            Class::RequestTimeout => 408,
            Class::PayloadTooLarge => 413,
            Class::Internal => 500,
            Class::Unavailable => 503,
            Class::DeadlineExceeded => 504,
            Class::ClientClosed => 499,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            Class::BadRequest => tonic::Code::InvalidArgument,
            Class::Unauthorized => tonic::Code::Unauthenticated,
            Class::NotFound => tonic::Code::NotFound,
            Class::PayloadTooLarge => tonic::Code::ResourceExhausted,
            Class::RequestTimeout | Class::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Class::Unavailable => tonic::Code::Unavailable,
            Class::ClientClosed => tonic::Code::Cancelled,
            Class::Internal => tonic::Code::Internal,
        }
    }
}

/// A failed request: its class, the message the client gets, and the kind
/// it is counted under in the metrics.
#[derive(Debug)]
pub struct ApiError {
    pub class: Class,
    pub message: String,
    pub kind: &'static str,
}

impl ApiError {
    pub fn new(class: Class, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            kind,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Class::BadRequest, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Class::NotFound, "not_found", message)
    }

    /// A failed run: the client's input (400), the deadline (504), or a
    /// stage (500, the message starting with the `StageError` kind).
    pub fn from_run(error: RunError) -> Self {
        let message = error.to_string();
        match &error {
            RunError::Input { .. } => Self::bad_request(message),
            e if e.is_deadline() => {
                let kind = match e {
                    RunError::Stage(stage) => stage.kind(),
                    _ => "DeadlineExceeded",
                };
                Self::new(Class::DeadlineExceeded, kind, message)
            }
            RunError::Stage(stage) => {
                let kind = stage.kind();
                // A stage that judged the request's tensors invalid speaks
                // for the client's input.
                let class = match stage {
                    StageError::Reported {
                        kind: ErrorKind::InvalidInput,
                        ..
                    } => Class::BadRequest,
                    // The host is out of instances: try again later.
                    StageError::PoolExhausted { .. } => Class::Unavailable,
                    _ => Class::Internal,
                };
                Self::new(class, kind, format!("{kind}: {message}"))
            }
            _ => Self::new(Class::Internal, "Internal", message),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.class.grpc(), e.message)
    }
}
