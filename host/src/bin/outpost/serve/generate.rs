//! Text generation over HTTP, for pipelines whose stages emit tokens as they
//! make them (the `generate` stage): OpenAI's `POST /v1/chat/completions`
//! and `POST /v1/completions` (with `stream: true` as server-sent events)
//! and `GET /v1/models`, and KServe/Triton's `generate` and
//! `generate_stream`.
//!
//! Which pipeline inputs the OpenAI endpoints fill: `messages` (chat: the
//! conversation as a JSON list of `{role, content}`, the template is the
//! pipeline's) or `text` (completions: the prompt), and `parameters` (the
//! sampling fields the request set, as a JSON object) when the pipeline
//! takes it. What they read: the `text` output, `finish_reason` if given,
//! and `input_ids` / `token_ids` for the token counts (`usage`). While the
//! run lasts, each partial `text` a stage emits is a chunk of the stream.
//!
//! A client that goes away stops the generation: the stage's next `emit`
//! hears that nobody listens, and the `generate` stage ends there.

use super::error::{ApiError, Class};
use super::http::{HttpState, lookup, read_body};
use super::kserve::{self, WireData, WireInput, WireOutput};
use super::models::{Entry, Served};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_host::stage::Sink;
use outpost_host::{ElementType, Tensor};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The routes, behind the same bearer token as KServe's (which is what the
/// OpenAI clients send as their API key).
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v2/models/{name}/generate", post(generate))
        .route(
            "/v2/models/{name}/versions/{version}/generate",
            post(generate),
        )
        .route("/v2/models/{name}/generate_stream", post(generate_stream))
        .route(
            "/v2/models/{name}/versions/{version}/generate_stream",
            post(generate_stream),
        )
}

/// What a run sends its response while it lasts.
enum Event {
    /// What a stage emitted.
    Partial(Vec<Tensor>),
    /// The run ended.
    Done(Result<Vec<Tensor>, ApiError>),
}

/// Runs `inputs` on `served` in the background. When `partials`, what
/// stages emit arrives as [`Event::Partial`]; the end as [`Event::Done`].
/// Dropping the receiver (the client went away) stops the generation at
/// its next token.
fn start(
    state: &HttpState,
    served: Arc<Served>,
    entry: Entry,
    inputs: Vec<Tensor>,
    partials: bool,
) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let to_sink = tx.clone();
    let sink = Sink::new(move |_stage, outputs| {
        if partials {
            to_sink.send(Event::Partial(outputs)).is_ok()
        } else {
            !to_sink.is_closed()
        }
    });
    let app = state.app.clone();
    tokio::spawn(async move {
        let run = served.infer_streaming(&entry, inputs, None, Some(sink), &app.metrics);
        // A client that goes away while its request waits for a slot gives
        // the slot up; once running, the stage hears it at its next emit.
        let result = tokio::select! {
            result = run => result,
            () = tx.closed() => Err(ApiError::new(
                Class::ClientClosed,
                "cancelled",
                format!("model '{}': the client went away before its answer", served.name),
            )),
        };
        served.count(&app.metrics, &result);
        let _ = tx.send(Event::Done(result));
    });
    rx
}

/// Waits for the end of a run started without partials.
async fn finish(mut events: mpsc::UnboundedReceiver<Event>) -> Result<Vec<Tensor>, ApiError> {
    while let Some(event) = events.recv().await {
        if let Event::Done(result) = event {
            return result;
        }
    }
    Err(ApiError::new(
        Class::Internal,
        "Internal",
        "the run ended without an answer",
    ))
}

/// The first event of a streamed run, or the error it failed with before
/// it produced anything: a request refused before its first token gets an
/// HTTP status of its own, not a stream that opens with an error.
async fn first_event(
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<Option<Event>, ApiError> {
    match events.recv().await {
        Some(Event::Done(Err(e))) => Err(e),
        other => Ok(other),
    }
}

/// A server-sent events response: `first`, then each event, turned into
/// text by `format`, becomes `data: TEXT`; then `last`, if any, once the
/// run has ended well.
fn event_stream(
    first: Option<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    format: impl FnMut(Event) -> Result<Vec<String>, String> + Send + 'static,
    last: Option<&'static str>,
) -> Response {
    let start = Some((first, events, format));
    let stream = futures_util::stream::unfold(start, move |state| async move {
        let (mut pending, mut events, mut format) = state?;
        let event = match pending.take() {
            Some(event) => event,
            None => events.recv().await?,
        };
        // An event `format` refuses ends the stream with its error; the
        // run, its channel gone, stops at its next emit.
        let (lines, more) = match event {
            Event::Done(result) => {
                let ok = result.is_ok();
                match format(Event::Done(result)) {
                    Ok(mut lines) => {
                        if ok {
                            lines.extend(last.map(str::to_owned));
                        }
                        (lines, false)
                    }
                    Err(error) => (vec![error], false),
                }
            }
            partial => match format(partial) {
                Ok(lines) => (lines, true),
                Err(error) => (vec![error], false),
            },
        };
        let text: String = lines.iter().map(|l| format!("data: {l}\n\n")).collect();
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(text)),
            more.then_some((None, events, format)),
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

// ---- OpenAI ----

/// An error as OpenAI's API gives it: `{"error": {message, type, code}}`.
fn openai_error(e: &ApiError) -> Value {
    let kind = match e.class {
        Class::BadRequest | Class::PayloadTooLarge => "invalid_request_error",
        Class::Unauthorized => "authentication_error",
        Class::NotFound => "not_found_error",
        Class::Unavailable => "overloaded_error",
        Class::RequestTimeout | Class::DeadlineExceeded => "timeout_error",
        Class::ClientClosed => "cancelled",
        Class::Internal => "server_error",
    };
    json!({ "error": { "message": e.message, "type": kind, "param": null, "code": e.kind } })
}

pub(super) fn openai_error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.class.http()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(openai_error(e))).into_response();
    // OpenAI's clients retry 5xx answers by default. A generation that met
    // its deadline, or a stage that failed, would only fail again while
    // holding the device as long: tell them not to (`x-should-retry`, which
    // they read before their own rule). An overloaded server (503), or a
    // request whose deadline passed in the queue before it ran, is left to
    // their backoff.
    if matches!(e.class, Class::DeadlineExceeded | Class::Internal) && e.kind != "QueueTimeout" {
        response
            .headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

async fn list_models(State(state): State<Arc<HttpState>>) -> Response {
    let data: Vec<Value> = state
        .app
        .models()
        .iter()
        .map(|m| json!({ "id": m.name, "object": "model", "created": 0, "owned_by": "outpost" }))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// Which OpenAI endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    /// The pipeline input the conversation or prompt goes to.
    fn input(self) -> &'static str {
        match self {
            Api::Chat => "messages",
            Api::Completions => "text",
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    openai(state, headers, body, Api::Chat).await
}

async fn completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    openai(state, headers, body, Api::Completions).await
}

/// Request fields passed to the pipeline's `parameters` input, under the
/// name given there.
const SAMPLING: [(&str, &str); 7] = [
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("seed", "seed"),
    ("stop", "stop"),
];

/// Fields accepted and ignored (they change nothing a server must honour),
/// and fields accepted only at their default, with it.
const IGNORED: [&str; 5] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];

fn at_default(key: &str, value: &Value) -> Option<bool> {
    Some(match key {
        "n" | "best_of" => value.is_null() || value.as_u64() == Some(1),
        // Chat's logprobs is a flag; completions' a count (0: none).
        "logprobs" | "echo" => {
            value.is_null() || *value == json!(false) || value.as_u64() == Some(0)
        }
        "top_logprobs" | "suffix" | "tool_choice" | "functions" | "function_call" => {
            value.is_null() || (key == "tool_choice" && *value == json!("none"))
        }
        "frequency_penalty" | "presence_penalty" => value.is_null() || value.as_f64() == Some(0.0),
        "logit_bias" => value.is_null() || value.as_object().is_some_and(Map::is_empty),
        "tools" => value.is_null() || value.as_array().is_some_and(Vec::is_empty),
        "response_format" => value.is_null() || value["type"] == json!("text"),
        _ => return None,
    })
}

/// A parsed OpenAI request: the served model, the pipeline inputs it
/// fills, and whether (and how) it streams.
struct OpenAiRequest {
    served: Arc<Served>,
    inputs: Vec<Tensor>,
    stream: bool,
    include_usage: bool,
}

/// The request as JSON, and the model it names.
fn openai_model(
    state: &HttpState,
    body: &[u8],
    api: Api,
) -> Result<(Map<String, Value>, Arc<Served>), ApiError> {
    let request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of POST {} is not a JSON object: {e}",
            api.path()
        ))
    })?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("field 'model' (a string, the model's name) is missing")
        })?;
    let served = state.app.model(model, None)?;
    Ok((request, served))
}

fn parse_openai(
    request: &Map<String, Value>,
    served: Arc<Served>,
    api: Api,
) -> Result<OpenAiRequest, ApiError> {
    let mut content = None;
    let mut sampling = Map::new();
    let mut stream = false;
    let mut include_usage = false;
    for (key, value) in request {
        match key.as_str() {
            "model" => {}
            "messages" if api == Api::Chat => content = Some(messages(value)?),
            "prompt" if api == Api::Completions => content = Some(prompt(value)?),
            "stream" => {
                stream = match value {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "field 'stream' must be true or false, not {other}"
                        )));
                    }
                }
            }
            "stream_options" => {
                include_usage = match value.get("include_usage") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "field 'stream_options.include_usage' must be true or false, not {other}"
                        )));
                    }
                }
            }
            key if IGNORED.contains(&key) => {}
            key => match (
                SAMPLING.iter().find(|(k, _)| *k == key),
                at_default(key, value),
            ) {
                (Some(_), _) if value.is_null() => {}
                (Some((_, name)), _) => {
                    sampling.insert((*name).to_owned(), value.clone());
                }
                (None, Some(true)) => {}
                (None, Some(false)) => {
                    return Err(ApiError::bad_request(format!(
                        "field '{key}' = {value} is not supported by this server; leave it out"
                    )));
                }
                (None, None) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown field '{key}' for POST {}; this server takes model, {}, stream, stream_options and the sampling fields {}",
                        api.path(),
                        if api == Api::Chat {
                            "messages"
                        } else {
                            "prompt"
                        },
                        SAMPLING.map(|(k, _)| k).join(", ")
                    )));
                }
            },
        }
    }
    let Some(content) = content else {
        return Err(ApiError::bad_request(format!(
            "field '{}' is missing",
            if api == Api::Chat {
                "messages"
            } else {
                "prompt"
            }
        )));
    };
    let inputs = pipeline_inputs(&served, api, content, sampling)?;
    Ok(OpenAiRequest {
        served,
        inputs,
        stream,
        include_usage,
    })
}

/// The conversation as the pipeline's `messages` input: a JSON list of
/// `{role, content}` with text content (OpenAI's list of text parts is
/// joined). Which roles are allowed is the pipeline's template's business.
fn messages(value: &Value) -> Result<String, ApiError> {
    let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        ApiError::bad_request("field 'messages' must be a non-empty list of {role, content}")
    })?;
    let mut out = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let role = message["role"].as_str().ok_or_else(|| {
            ApiError::bad_request(format!("messages[{i}]: 'role' (a string) is missing"))
        })?;
        let content = match &message["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{i}].content[{j}]: only text parts are supported, not {}",
                                kind.unwrap_or("a part without a type")
                            )));
                        }
                    }
                }
                text
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: 'content' must be text or a list of text parts, not {other}"
                )));
            }
        };
        out.push(json!({ "role": role, "content": content }));
    }
    Ok(Value::Array(out).to_string())
}

fn prompt(value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(list) if list.len() == 1 && list[0].is_string() => {
            Ok(list[0].as_str().unwrap_or_default().to_owned())
        }
        _ => Err(ApiError::bad_request(
            "field 'prompt' must be one text (lists of prompts and token ids are not supported: send one request each)",
        )),
    }
}

/// Fills the pipeline's inputs: `input` with `content`, `parameters` (when
/// the pipeline takes it) with the sampling fields. Anything else the
/// pipeline needs cannot come from this API.
fn pipeline_inputs(
    served: &Served,
    api: Api,
    content: String,
    sampling: Map<String, Value>,
) -> Result<Vec<Tensor>, ApiError> {
    let takes = |name: &str| served.inputs.iter().any(|(n, _)| n == name);
    if !takes(api.input()) {
        return Err(ApiError::bad_request(format!(
            "model '{}' cannot serve {}: its pipeline takes {} but this endpoint fills '{}'{}",
            served.name,
            api.path(),
            super::models::names(&served.inputs),
            api.input(),
            if api == Api::Chat {
                " (the conversation as JSON; e.g. a bpe-tokenizer stage with messages = true)"
            } else {
                " (the prompt)"
            }
        )));
    }
    if !served.outputs.iter().any(|(n, _)| n == "text") {
        return Err(ApiError::bad_request(format!(
            "model '{}' cannot serve {}: its pipeline gives no 'text' output (it gives {})",
            served.name,
            api.path(),
            super::models::names(&served.outputs)
        )));
    }
    let mut inputs = vec![Tensor::text(api.input(), &content)];
    if takes("parameters") {
        inputs.push(Tensor::text(
            "parameters",
            &Value::Object(sampling).to_string(),
        ));
    } else if !sampling.is_empty() {
        return Err(ApiError::bad_request(format!(
            "model '{}' samples as its pipeline says (it takes no 'parameters' input), so {} cannot be set per request; leave them out",
            served.name,
            sampling.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    for (name, _) in &served.inputs {
        if !inputs.iter().any(|t| &t.name == name) {
            return Err(ApiError::bad_request(format!(
                "model '{}' cannot serve {}: its pipeline also takes '{name}', which this endpoint cannot fill (use /v2/models/{}/generate)",
                served.name,
                api.path(),
                served.name
            )));
        }
    }
    Ok(inputs)
}

async fn openai(state: Arc<HttpState>, headers: HeaderMap, body: Body, api: Api) -> Response {
    // Held until the model has taken the request in, or refused it.
    let Ok(reading) = state.openai_bodies.clone().try_acquire_owned() else {
        return openai_error_response(&ApiError::new(
            Class::Unavailable,
            "overloaded",
            "the server is reading as many requests as its models may take in; retry later",
        ));
    };
    let body = match read_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(e) => return openai_error_response(&e),
    };
    let (json, served) = match openai_model(&state, &body, api) {
        Ok(found) => found,
        Err(e) => return openai_error_response(&e),
    };
    // Counted here when refused before running, else when the run ends.
    let taken = parse_openai(&json, served.clone(), api)
        .and_then(|request| served.enter().map(|entry| (request, entry)));
    let (request, entry) = match taken {
        Ok(taken) => taken,
        Err(e) => {
            let response = openai_error_response(&e);
            served.count(&state.app.metrics, &Err::<(), _>(e));
            return response;
        }
    };
    // The model bounds it from here on.
    drop(reading);
    let reply = Reply::new(&request.served.name, api);
    let mut events = start(
        &state,
        request.served.clone(),
        entry,
        request.inputs,
        request.stream,
    );
    if request.stream {
        let first = match first_event(&mut events).await {
            Ok(first) => first,
            Err(e) => return openai_error_response(&e),
        };
        let mut reply = reply;
        let include_usage = request.include_usage;
        return event_stream(
            first,
            events,
            move |event| Ok(reply.chunks(event, include_usage)),
            Some("[DONE]"),
        );
    }
    match finish(events).await {
        Ok(outputs) => axum::Json(reply.whole(&outputs)).into_response(),
        Err(e) => openai_error_response(&e),
    }
}

/// One response's identity, and what it has streamed.
struct Reply {
    id: String,
    created: u64,
    model: String,
    api: Api,
    /// Whether the first chunk (the role, for chat) went out.
    started: bool,
    /// Whether any text streamed: if none did, the final `text` goes out
    /// whole at the end (a pipeline whose text comes from a stage that does
    /// not emit).
    streamed_text: bool,
}

impl Reply {
    fn new(model: &str, api: Api) -> Self {
        let mut random = [0u8; 12];
        let _ = getrandom::fill(&mut random);
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id: format!(
                "{}-{hex}",
                if api == Api::Chat { "chatcmpl" } else { "cmpl" }
            ),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            api,
            started: false,
            streamed_text: false,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completions, _) => "text_completion",
        }
    }

    /// One choice carrying `text` (a delta when streaming).
    fn choice(&self, text: Option<&str>, finish: Option<&str>, chunk: bool) -> Value {
        let mut choice = json!({ "index": 0, "finish_reason": finish });
        match (self.api, chunk) {
            (Api::Chat, true) => {
                choice["delta"] = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
            }
            (Api::Chat, false) => {
                choice["message"] = json!({ "role": "assistant", "content": text.unwrap_or("") });
            }
            (Api::Completions, _) => {
                choice["text"] = json!(text.unwrap_or(""));
                choice["logprobs"] = Value::Null;
            }
        }
        choice
    }

    fn envelope(&self, choices: Vec<Value>, chunk: bool) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole answer of a request that did not stream.
    fn whole(&self, outputs: &[Tensor]) -> Value {
        let text = text_of(outputs, "text");
        let mut whole = self.envelope(
            vec![self.choice(Some(&text), Some(&finish_reason(outputs)), false)],
            false,
        );
        if let Some(usage) = token_usage(outputs) {
            whole["usage"] = usage;
        }
        whole
    }

    /// The chunks (`data:` lines) an event becomes.
    fn chunks(&mut self, event: Event, include_usage: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.started && self.api == Api::Chat {
            self.started = true;
            let mut first = self.envelope(vec![self.choice(Some(""), None, true)], true);
            first["choices"][0]["delta"]["role"] = json!("assistant");
            lines.push(first.to_string());
        }
        match event {
            Event::Partial(outputs) => {
                if let Some(t) = outputs.iter().find(|t| t.name == "text") {
                    let piece = String::from_utf8_lossy(&t.data);
                    if !piece.is_empty() {
                        self.streamed_text = true;
                        lines.push(
                            self.envelope(vec![self.choice(Some(&piece), None, true)], true)
                                .to_string(),
                        );
                    }
                }
            }
            Event::Done(Ok(outputs)) => {
                let text = text_of(&outputs, "text");
                if !self.streamed_text && !text.is_empty() {
                    lines.push(
                        self.envelope(vec![self.choice(Some(&text), None, true)], true)
                            .to_string(),
                    );
                }
                let reason = finish_reason(&outputs);
                lines.push(
                    self.envelope(vec![self.choice(None, Some(&reason), true)], true)
                        .to_string(),
                );
                if include_usage && let Some(usage) = token_usage(&outputs) {
                    let mut last = self.envelope(Vec::new(), true);
                    last["usage"] = usage;
                    lines.push(last.to_string());
                }
            }
            Event::Done(Err(e)) => lines.push(openai_error(&e).to_string()),
        }
        lines
    }
}

fn text_of(outputs: &[Tensor], name: &str) -> String {
    outputs
        .iter()
        .find(|t| t.name == name && t.element_type == ElementType::Utf8)
        .map(|t| String::from_utf8_lossy(&t.data).into_owned())
        .unwrap_or_default()
}

/// The pipeline's `finish_reason` output, or "stop".
fn finish_reason(outputs: &[Tensor]) -> String {
    let reason = text_of(outputs, "finish_reason");
    if reason.is_empty() {
        "stop".to_owned()
    } else {
        reason
    }
}

/// Token counts from the pipeline's `input_ids` and `token_ids` outputs,
/// when it gives both.
fn token_usage(outputs: &[Tensor]) -> Option<Value> {
    let count = |name: &str| {
        outputs
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| outpost_host::tensor::element_count(&t.dims))
    };
    let (prompt, completion) = (count("input_ids")?, count("token_ids")?);
    Some(json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }))
}

// ---- KServe / Triton ----

async fn generate(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (served, events, id) = kserve_start(&state, &params, &headers, body, false).await?;
    let outputs = finish(events).await?;
    let mut reply = kserve_head(&served, id.as_ref());
    for tensor in outputs {
        let (name, value) = field(tensor)?;
        reply[name] = value;
    }
    Ok(axum::Json(reply).into_response())
}

async fn generate_stream(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (served, mut events, id) = kserve_start(&state, &params, &headers, body, true).await?;
    let first = first_event(&mut events).await?;
    let head = kserve_head(&served, id.as_ref());
    let mut streamed: Vec<String> = Vec::new();
    Ok(event_stream(
        first,
        events,
        move |event| {
            let mut reply = head.clone();
            match event {
                Event::Partial(outputs) => {
                    for tensor in outputs {
                        // What a stage emits is named by the stage, not
                        // checked against the pipeline's outputs.
                        if RESERVED.contains(&tensor.name.as_str()) {
                            let e = format!(
                                "model '{}': a stage emitted an output named '{}', which generate uses for itself ({}); the generation was stopped",
                                served.name,
                                tensor.name,
                                RESERVED.join(", ")
                            );
                            return Err(json!({ "error": e }).to_string());
                        }
                        if !streamed.contains(&tensor.name) {
                            streamed.push(tensor.name.clone());
                        }
                        match field(tensor) {
                            Ok((name, value)) => reply[name] = value,
                            Err(e) => return Err(json!({ "error": e.message }).to_string()),
                        }
                    }
                }
                // The outputs that did not stream, once: those that did
                // have been sent piece by piece.
                Event::Done(Ok(outputs)) => {
                    for tensor in outputs {
                        if streamed.contains(&tensor.name) {
                            continue;
                        }
                        match field(tensor) {
                            Ok((name, value)) => reply[name] = value,
                            Err(e) => return Err(json!({ "error": e.message }).to_string()),
                        }
                    }
                }
                Event::Done(Err(e)) => return Err(json!({ "error": e.message }).to_string()),
            }
            Ok(vec![reply.to_string()])
        },
        None,
    ))
}

/// Reads a `generate` request and starts its run.
async fn kserve_start(
    state: &HttpState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
    partials: bool,
) -> Result<(Arc<Served>, mpsc::UnboundedReceiver<Event>, Option<Value>), ApiError> {
    let served = lookup(state, params)?;
    let (entry, inputs, id) = counted(
        state,
        &served,
        match reserved_name(&served) {
            Some(e) => Err(e),
            None => kserve_request(&served, state, headers, body).await,
        },
    )?;
    let events = start(state, served.clone(), entry, inputs, partials);
    Ok((served, events, id))
}

/// Fields a `generate` reply and request use for themselves (`error`: a
/// stream's error event).
const RESERVED: [&str; 4] = ["id", "model_name", "model_version", "error"];

/// Why `served` cannot be reached through `generate`: an input or output
/// named like a field the protocol uses for itself would be lost or would
/// overwrite that field.
fn reserved_name(served: &Served) -> Option<ApiError> {
    let clash = |names: &[(String, Option<outpost_host::TensorSpec>)]| {
        names
            .iter()
            .find(|(n, _)| RESERVED.contains(&n.as_str()))
            .map(|(n, _)| n.clone())
    };
    let (side, name) = match (clash(&served.inputs), clash(&served.outputs)) {
        (Some(n), _) => ("input", n),
        (None, Some(n)) => ("output", n),
        (None, None) => return None,
    };
    Some(ApiError::bad_request(format!(
        "model '{}' has an {side} named '{name}', which generate uses for itself ({}); rename it in the pipeline (e.g. {side}s = {{ {name} = \"{name}_\" }} on its stage), or use /infer",
        served.name,
        RESERVED.join(", ")
    )))
}

fn kserve_head(served: &Served, id: Option<&Value>) -> Value {
    let mut head = json!({ "model_name": served.name, "model_version": served.version });
    if let Some(id) = id {
        head["id"] = id.clone();
    }
    head
}

/// An output as a JSON field: a text as a string, numbers as a flat list.
fn field(tensor: Tensor) -> Result<(String, Value), ApiError> {
    let name = tensor.name.clone();
    if tensor.element_type == ElementType::Utf8 {
        return Ok((name, json!(String::from_utf8_lossy(&tensor.data))));
    }
    Ok((name, WireOutput::new(tensor).json_data()?))
}

/// Reads a `generate` body: each field is the pipeline input of that name
/// (a text input takes a string, or any JSON value as its text; a numeric
/// input one number), except `id`, echoed back.
async fn kserve_request(
    served: &Served,
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Entry, Vec<Tensor>, Option<Value>), ApiError> {
    let entry = served.enter()?;
    let body = read_body(state, headers, body).await?;
    let request: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("a generate request must be a JSON object: {e}"))
    })?;
    let mut inputs = Vec::with_capacity(request.len());
    let mut id = None;
    for (key, value) in request {
        if key == "id" {
            id = Some(value);
            continue;
        }
        let Some((_, spec)) = served.inputs.iter().find(|(n, _)| *n == key) else {
            return Err(ApiError::bad_request(format!(
                "model '{}' has no input '{key}'; generate maps each field to the pipeline input of that name: {}",
                served.name,
                super::models::names(&served.inputs)
            )));
        };
        let ty = spec.as_ref().and_then(|s| s.element_type);
        let tensor = match (ty, value) {
            (Some(ElementType::Utf8) | None, Value::String(s)) => Tensor::text(&key, &s),
            (Some(ElementType::Utf8) | None, other) => Tensor::text(&key, &other.to_string()),
            (Some(ty), Value::Number(n)) => kserve::to_tensor(
                WireInput {
                    name: key.clone(),
                    datatype: kserve::datatype(ty).to_owned(),
                    shape: vec![1],
                    data: WireData::Json(json!([n])),
                },
                spec.as_ref(),
            )?,
            (Some(ty), other) => {
                return Err(ApiError::bad_request(format!(
                    "input '{key}' takes {} and generate can give it one number, not {other}; use /infer for tensors",
                    kserve::datatype(ty)
                )));
            }
        };
        inputs.push(tensor);
    }
    Ok((entry, inputs, id))
}

/// Counts a request refused before its run (the run counts itself).
fn counted<T>(
    state: &HttpState,
    served: &Served,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if result.is_err() {
        served.count(&state.app.metrics, &result);
    }
    result
}
