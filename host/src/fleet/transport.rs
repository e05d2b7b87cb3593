//! Fetching from a fleet repository: `https://` and `http://` through
//! hyper's client (TLS by rustls, trusting the system's certificate
//! authorities plus an optional CA file) and `file://` from the local file
//! system, for TUF metadata (as a
//! [`tough::Transport`]) and for blobs (with a start offset, so an
//! interrupted download resumes with an HTTP `Range` request).
//!
//! Every read has a stall timeout: a server that accepts the connection and
//! then sends nothing cannot hang the update agent. Sizes are bounded by the
//! callers (tough for metadata, the signed manifest for blobs).

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
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

/// The slowest average a download may keep, after its first stall period
/// (bytes per second): 1 KiB/s moves a 60 MB model in under 17 hours.
pub const MIN_RATE: u64 = 1024;

/// Why the TLS trust anchors could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.as_deref().map_or("TLS setup".to_owned(), |p| format!("CA file {}", p.display())))]
pub struct TlsError {
    /// The CA file, when it is the cause.
    pub path: Option<std::path::PathBuf>,
    /// What is wrong.
    pub problem: String,
}

/// The client TLS configuration for fetches: rustls with the system's
/// certificate authorities (the store `rustls-native-certs` finds, on
/// Debian `/etc/ssl/certs`) plus every certificate in `ca_file` (PEM), for a
/// repository or registry behind a private CA.
pub fn client_tls(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    // A store that cannot be read (none installed) leaves only the CA file;
    // an HTTPS fetch then fails naming the unknown issuer.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let bad = |problem: String| TlsError {
            path: Some(path.to_owned()),
            problem,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(format!("not a readable PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                "holds no certificate (expected PEM 'BEGIN CERTIFICATE' blocks)".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate is not a usable CA: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: None,
            problem: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A connector for `https://` (with `tls`) and `http://` that gives up
/// connecting after `stall`.
pub(crate) fn https_connector(
    stall: Duration,
    tls: &rustls::ClientConfig,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(stall));
    http.set_nodelay(true);
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// Fetches `https://`, `http://` and `file://` URLs.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
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
    /// A fetcher whose reads give up after `stall` without a byte, and
    /// whose HTTPS connections trust what `tls` trusts (see [`client_tls`]).
    pub fn new(stall: Duration, tls: Arc<rustls::ClientConfig>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https_connector(stall, &tls));
        Self { client, stall }
    }

    /// GETs `url`, from byte `offset` on (HTTP `Range: bytes=OFFSET-` when
    /// it is above 0).
    pub async fn get(&self, url: &Url, offset: u64) -> Result<Fetched, FetchError> {
        match url.scheme() {
            "https" | "http" => self.get_http(url, offset).await,
            "file" => get_file(url, offset).await,
            other => Err(FetchError::new(
                url,
                format!("unsupported URL scheme '{other}' (use https://, http:// or file://)"),
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
            .map_err(|e| FetchError::new(url, format!("request failed: {}", chain(&e))))?;
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
            let started = tokio::time::Instant::now();
            let mut received: u64 = 0;
            loop {
                // A trickle is a stall too (TUF's slow retrieval attack):
                // after the first `stall`, the body must keep an average of
                // MIN_RATE, so a download of bounded size ends in bounded
                // time.
                let allowed = stall
                    .saturating_add(Duration::from_secs_f64(received as f64 / MIN_RATE as f64));
                if started.elapsed() > allowed {
                    let _ = tx
                        .send(Err(FetchError::new(
                            &what,
                            format!(
                                "too slow: {received} bytes in {:.1} s, under {MIN_RATE} bytes/s",
                                started.elapsed().as_secs_f64()
                            ),
                        )))
                        .await;
                    break;
                }
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
                        Ok(data) => {
                            received += data.len() as u64;
                            Ok(data)
                        }
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

/// An error and its causes, one line: hyper's own text ("client error
/// (Connect)") hides the useful part, e.g. rustls's "invalid peer
/// certificate: UnknownIssuer".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
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
