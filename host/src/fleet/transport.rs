//! Fetching from a fleet repository: `http://` through hyper's client and
//! `file://` from the local file system, for TUF metadata (as a
//! [`tough::Transport`]) and for blobs (with a start offset, so an
//! interrupted download resumes with an HTTP `Range` request).
//!
//! Every read has a stall timeout: a server that accepts the connection and
//! then sends nothing cannot hang the update agent. Sizes are bounded by the
//! callers (tough for metadata, the signed manifest for blobs).

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::time::Duration;
use tough::{TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// A byte stream from a fetch.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send + Sync>>;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {problem}")]
pub struct FetchError {
    /// The URL.
    pub url: String,
    /// What went wrong.
    pub problem: String,
    /// Whether the server said the file does not exist (HTTP 404/410, or
    /// no such file).
    pub not_found: bool,
    /// Whether the server refused the range asked for (HTTP 416).
    pub range_refused: bool,
}

impl FetchError {
    fn new(url: &Url, problem: impl Into<String>) -> Self {
        Self {
            url: url.to_string(),
            problem: problem.into(),
            not_found: false,
            range_refused: false,
        }
    }
}

/// The answer to a fetch.
pub struct Fetched {
    /// Whether the body starts at the offset asked for (`206 Partial
    /// Content`, or a file read from there); false when it is the whole
    /// file from byte 0, so the caller must restart.
    pub from_offset: bool,
    /// The body.
    pub body: ByteStream,
}

/// Fetches `http://` and `file://` URLs.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    stall: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("stall", &self.stall)
            .finish()
    }
}

impl Fetcher {
    /// A fetcher whose reads give up after `stall` without a byte.
    pub fn new(stall: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(stall));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, stall }
    }

    /// GETs `url`, from byte `offset` on (HTTP `Range: bytes=OFFSET-` when
    /// it is above 0).
    pub async fn get(&self, url: &Url, offset: u64) -> Result<Fetched, FetchError> {
        match url.scheme() {
            "http" => self.get_http(url, offset).await,
            "file" => get_file(url, offset).await,
            other => Err(FetchError::new(
                url,
                format!("unsupported URL scheme '{other}' (use http:// or file://)"),
            )),
        }
    }

    async fn get_http(&self, url: &Url, offset: u64) -> Result<Fetched, FetchError> {
        let uri: hyper::Uri = url
            .as_str()
            .parse()
            .map_err(|e| FetchError::new(url, format!("not a usable URL: {e}")))?;
        let mut request = hyper::Request::get(uri);
        if offset > 0 {
            request = request.header(hyper::header::RANGE, format!("bytes={offset}-"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| FetchError::new(url, e.to_string()))?;
        let response = tokio::time::timeout(self.stall, self.client.request(request))
            .await
            .map_err(|_| FetchError::new(url, format!("no answer within {:?}", self.stall)))?
            .map_err(|e| FetchError::new(url, format!("request failed: {e}")))?;
        let status = response.status();
        let from_offset = match status.as_u16() {
            200 => offset == 0,
            206 => true,
            // The offset is at or past the end: the server has nothing more.
            416 => {
                return Err(FetchError::new(
                    url,
                    format!(
                        "range from byte {offset} refused (416): the partial file is longer than the server's"
                    ),
                ));
            }
            404 | 410 => {
                return Err(FetchError {
                    not_found: true,
                    ..FetchError::new(url, format!("not found ({status})"))
                });
            }
            _ => return Err(FetchError::new(url, format!("HTTP status {status}"))),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, FetchError>>(4);
        let stall = self.stall;
        let what = url.clone();
        let mut body = response.into_body();
        tokio::spawn(async move {
            loop {
                let frame = match tokio::time::timeout(stall, body.frame()).await {
                    Err(_) => Err(FetchError::new(
                        &what,
                        format!("the server sent nothing for {stall:?}"),
                    )),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        Err(FetchError::new(&what, format!("connection broke: {e}")))
                    }
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue, // trailers
                    },
                };
                let failed = frame.is_err();
                if tx.send(frame).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Fetched {
            from_offset,
            body: Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))),
        })
    }
}

async fn get_file(url: &Url, offset: u64) -> Result<Fetched, FetchError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = url
        .to_file_path()
        .map_err(|()| FetchError::new(url, "not a local file path"))?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| FetchError {
        not_found: e.kind() == std::io::ErrorKind::NotFound,
        ..FetchError::new(url, e.to_string())
    })?;
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| FetchError::new(url, e.to_string()))?;
    }
    let what = url.clone();
    let stream = futures_util::stream::unfold(Some(file), move |file| {
        let what = what.clone();
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(FetchError::new(&what, e.to_string())), None)),
            }
        }
    });
    Ok(Fetched {
        from_offset: true,
        body: Box::pin(stream),
    })
}

/// The [`tough::Transport`] over a [`Fetcher`].
#[derive(Clone, Debug)]
pub struct TufTransport(pub Fetcher);

#[tough::async_trait]
impl tough::Transport for TufTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let fetched = self.0.get(&url, 0).await.map_err(|e| {
            let kind = if e.not_found {
                TransportErrorKind::FileNotFound
            } else {
                TransportErrorKind::Other
            };
            TransportError::new_with_cause(kind, url.as_str(), e)
        })?;
        use futures_util::StreamExt;
        let url = url.to_string();
        Ok(Box::pin(fetched.body.map(move |item| {
            item.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e))
        })))
    }
}
