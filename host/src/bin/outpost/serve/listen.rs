//! Accepting connections: TLS when configured, a cap on open connections,
//! read timeouts and header limits (a slow client holds a connection, never
//! a worker), and a graceful stop that lets requests in flight finish.

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// Requests one gRPC connection may have open at once.
const GRPC_STREAMS: u32 = 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    /// HTTP/1.1: KServe REST and /metrics.
    Http,
    /// HTTP/2: gRPC.
    Grpc,
}

/// Connection limits of a listener.
#[derive(Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub connections: Arc<Semaphore>,
}

/// A TLS acceptor for `protocol` from PEM files, with ALPN set to what the
/// listener speaks.
pub fn tls_acceptor(cert: &Path, key: &Path, protocol: Protocol) -> Result<TlsAcceptor> {
    use pki_types::pem::PemObject;
    let certs = pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "listen.tls_cert {}: not a readable PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "listen.tls_cert {}: holds no certificate (expected PEM 'BEGIN CERTIFICATE' blocks)",
            cert.display()
        );
    }
    let key_der = pki_types::PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "listen.tls_key {}: not a readable PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "listen.tls_cert {} and listen.tls_key {} do not form a usable pair",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = match protocol {
        Protocol::Http => vec![b"http/1.1".to_vec()],
        Protocol::Grpc => vec![b"h2".to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` and serves `service` on each until
/// `stop` turns true; connections are registered with `watcher` so the
/// caller can wait for them to finish.
pub async fn accept_loop<S, B>(
    listener: TcpListener,
    protocol: Protocol,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) where
    S: tower::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing a connection: listen.max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, protocol, service, &limits, watcher).await,
                Some(acceptor) => {
                    let Some(stream) = handshake(stream, &acceptor, &limits, protocol).await else {
                        return;
                    };
                    serve_connection(stream, protocol, service, &limits, watcher).await;
                }
            }
        });
    }
}

/// Completes a TLS handshake in time. A client speaking plain HTTP to the
/// TLS port gets a plain-text answer saying so, instead of a silent close.
async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    limits: &Limits,
    protocol: Protocol,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            if protocol == Protocol::Http {
                let body = "{\"error\": \"this port speaks HTTPS only (TLS is configured): use https://\"}";
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = stream;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

async fn serve_connection<I, S, B>(
    io: I,
    protocol: Protocol,
    service: S,
    limits: &Limits,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http => {
            let service = TowerToHyperService::new(service);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .keep_alive(true);
            watcher.watch(builder.serve_connection(io, service)).await
        }
        Protocol::Grpc => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(GRPC_STREAMS)
                .keep_alive_interval(Some(Duration::from_secs(60)))
                .keep_alive_timeout(Duration::from_secs(20));
            // HTTP/2 has no head timeout of its own: a client that connects
            // and says nothing would hold its connection (and, at SIGTERM,
            // the drain) forever. It gets as long as an HTTP/1 head.
            let seen = Arc::new(AtomicBool::new(false));
            let flag = seen.clone();
            let service =
                TowerToHyperService::new(tower::util::MapRequest::new(service, move |request| {
                    flag.store(true, Ordering::Relaxed);
                    request
                }));
            let connection = watcher.watch(builder.serve_connection(io, service));
            tokio::pin!(connection);
            let silent = async {
                tokio::time::sleep(limits.header_read_timeout).await;
                if seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                result = &mut connection => result,
                () = silent => {
                    tracing::debug!("closing a gRPC connection that sent no request in time");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
