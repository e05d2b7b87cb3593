//! KServe v2 over HTTP/REST, with Triton's binary tensor data extension
//! (what `tritonclient.http` sends by default), and `/metrics`.

use super::error::{ApiError, Class};
use super::kserve::{self, InferRequest, WireData, WireInput, WireOutput};
use super::models::{App, Served};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Triton's header: the length of the JSON part of a body that carries
/// binary tensors after it.
const HEADER_LENGTH: &str = "inference-header-content-length";

pub struct HttpState {
    pub app: Arc<App>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// OpenAI requests name their model inside the body, so their bodies
    /// are read before a model takes them in: this bounds how many are
    /// read at once (as many as all models may take in).
    pub openai_bodies: Arc<tokio::sync::Semaphore>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    let guarded = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .merge(super::generate::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.class.http()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "error": e.message }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(&self)
    }
}

async fn authorize(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match state.app.authorize(header) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let mut response = error_for(request.uri().path(), &e);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let e = ApiError::not_found(format!(
        "no endpoint {} {path}; this server speaks KServe v2 (GET /v2, /v2/models/NAME, POST /v2/models/NAME/infer, /generate, /generate_stream), OpenAI's POST /v1/chat/completions and /v1/completions and GET /v1/models, and serves /metrics",
        request.method(),
    ));
    error_for(path, &e)
}

/// An error in the shape the client at `path` reads: OpenAI's under `/v1/`,
/// KServe's elsewhere.
fn error_for(path: &str, e: &ApiError) -> Response {
    if path == "/v1" || path.starts_with("/v1/") {
        super::generate::openai_error_response(e)
    } else {
        error(e)
    }
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let ready = state.app.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "outpost",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// The model a request path names (`{name}`, and `{version}` if given).
pub(super) fn lookup(
    state: &HttpState,
    params: &HashMap<String, String>,
) -> Result<Arc<Served>, ApiError> {
    let name = params.get("name").map_or("", String::as_str);
    state
        .app
        .model(name, params.get("version").map(String::as_str))
}

pub fn metadata_json(served: &Served) -> Value {
    let list = |tensors: &[(String, Option<outpost_host::TensorSpec>)]| -> Vec<Value> {
        tensors
            .iter()
            .map(|(name, spec)| {
                let (name, datatype, shape) = kserve::tensor_metadata(name, spec.as_ref());
                json!({ "name": name, "datatype": datatype, "shape": shape })
            })
            .collect()
    };
    json!({
        "name": served.name,
        "versions": [served.version],
        "platform": "outpost",
        "inputs": list(&served.inputs),
        "outputs": list(&served.outputs),
    })
}

async fn model_metadata(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let served = lookup(&state, &params)?;
    Ok(axum::Json(metadata_json(&served)).into_response())
}

async fn model_ready(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let served = lookup(&state, &params)?;
    let ready = state.app.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        status,
        axum::Json(json!({ "name": served.name, "ready": ready })),
    )
        .into_response())
}

/// The device's fleet status (what `outpost status` prints): what runs,
/// what ran before, the update agent's last check, rejected versions.
async fn status(State(state): State<Arc<HttpState>>) -> Result<Response, ApiError> {
    let Some(dir) = state.app.state_dir.clone() else {
        return Err(ApiError::not_found("no device state"));
    };
    let report = tokio::task::spawn_blocking(move || outpost_host::fleet::agent::read_status(&dir))
        .await
        .map_err(|e| ApiError::new(Class::Internal, "status", e.to_string()))?
        .map_err(|e| ApiError::new(Class::Internal, "status", e.to_string()))?;
    Ok(axum::Json(report).into_response())
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let text = state.app.metrics.render(&state.app.models());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Reads the whole body, refusing more than the limit (413) and bodies
/// that do not arrive in time (408).
pub(super) async fn read_body(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let too_large = |size: String| {
        ApiError::new(
            Class::PayloadTooLarge,
            "body_too_large",
            format!(
                "the request body ({size}) is over this server's limit of {} bytes (listen.max_body_mib)",
                state.max_body_bytes
            ),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > state.max_body_bytes as u64
    {
        return Err(too_large(format!("{length} bytes")));
    }
    match tokio::time::timeout(
        state.body_read_timeout,
        axum::body::to_bytes(body, state.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let limit_hit =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if limit_hit {
                Err(too_large("more".into()))
            } else {
                Err(ApiError::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
        Err(_) => Err(ApiError::new(
            Class::RequestTimeout,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms (listen.body_read_timeout_ms)",
                state.body_read_timeout.as_millis()
            ),
        )),
    }
}

async fn infer(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let served = lookup(&state, &params)?;
    let result = infer_model(&state, &served, &headers, body).await;
    served.count(&state.app.metrics, &result);
    result
}

async fn infer_model(
    state: &HttpState,
    served: &Arc<Served>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Taken in before the body is read: bodies in memory stay bounded.
    let entry = served.enter()?;
    let body = read_body(state, headers, body).await?;
    let json_length = match headers.get(HEADER_LENGTH) {
        Some(value) => {
            let n = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "header Inference-Header-Content-Length must be a number of bytes, not {value:?}"
                    ))
                })?;
            if n > body.len() {
                return Err(ApiError::bad_request(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            n
        }
        None => body.len(),
    };
    let (json_part, mut binary) = body.split_at(json_length);
    let request: InferRequest = serde_json::from_slice(json_part).map_err(|e| {
        ApiError::bad_request(format!(
            "the request is not a valid KServe v2 inference request: {e}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let data = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "input '{}': binary_data_size must be a number of bytes",
                            input.name
                        ))
                    })?;
                if size > binary.len() {
                    return Err(ApiError::bad_request(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                WireData::Raw(mine.to_vec())
            }
            (None, Some(data)) => WireData::Json(data),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "input '{}' has both data and binary_data_size; give one",
                    input.name
                )));
            }
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "input '{}' has no data (give \"data\", or binary data with binary_data_size)",
                    input.name
                )));
            }
        };
        served.add_input(
            &mut inputs,
            WireInput {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                data,
            },
        )?;
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data after the inputs that no input's binary_data_size claims",
            binary.len()
        )));
    }
    let all_binary = flag(&request.parameters, "binary_data_output")?;
    let wanted: Vec<(String, bool)> = match request.outputs {
        Some(list) => {
            let mut wanted = Vec::with_capacity(list.len());
            for output in list {
                served.check_output(&output.name)?;
                let binary = match output.parameters.get("binary_data") {
                    Some(_) => flag(&output.parameters, "binary_data")?,
                    None => all_binary,
                };
                wanted.push((output.name, binary));
            }
            wanted
        }
        None => served
            .outputs
            .iter()
            .map(|(n, _)| (n.clone(), all_binary))
            .collect(),
    };
    let asked = match request.parameters.get("timeout") {
        // Triton's request parameter, in microseconds.
        Some(v) => Some(Duration::from_micros(v.as_u64().ok_or_else(|| {
            ApiError::bad_request("parameter timeout must be a whole number of microseconds")
        })?)),
        None => None,
    };
    let outputs = served
        .infer(&entry, inputs, asked, &state.app.metrics)
        .await?;
    respond(served, request.id, outputs, &wanted)
}

fn respond(
    served: &Served,
    id: Option<String>,
    outputs: Vec<outpost_host::Tensor>,
    wanted: &[(String, bool)],
) -> Result<Response, ApiError> {
    let mut entries = Vec::with_capacity(wanted.len());
    let mut binary = Vec::new();
    for tensor in outputs {
        let Some((_, as_binary)) = wanted.iter().find(|(n, _)| *n == tensor.name) else {
            continue;
        };
        let out = WireOutput::new(tensor);
        let mut entry = json!({
            "name": out.name,
            "datatype": out.datatype,
            "shape": out.shape,
        });
        if *as_binary {
            entry["parameters"] = json!({ "binary_data_size": out.raw.len() });
            binary.extend_from_slice(&out.raw);
        } else {
            entry["data"] = out.json_data()?;
        }
        entries.push(entry);
    }
    let mut head = json!({
        "model_name": served.name,
        "model_version": served.version,
        "outputs": entries,
    });
    if let Some(id) = id {
        head["id"] = Value::String(id);
    }
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    let json_length = body.len();
    let mut response = if binary.is_empty() {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    } else {
        body.extend_from_slice(&binary);
        (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::HeaderName::from_static(HEADER_LENGTH),
                    json_length.to_string(),
                ),
            ],
            body,
        )
            .into_response()
    };
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

fn flag(parameters: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad_request(format!(
            "parameter {key} must be true or false, not {other}"
        ))),
    }
}
