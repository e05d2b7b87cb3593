//! A fleet repository on a web server that accepts uploads (HTTP `PUT`, as
//! nginx's WebDAV module, Apache's mod_dav or an object store's upload
//! endpoint do), edited from the operator's machine.
//!
//! The operator's commands work on a local mirror: [`Remote::pull`] brings
//! the metadata (root chain, timestamp, snapshot, targets) into a scratch
//! folder, the usual [`super::Publisher`] edits and signs it there, and
//! [`Remote::push`] uploads what changed, in the order a device can never
//! trip over: blobs, then targets, then root, targets and snapshot
//! metadata (all named by version), and the timestamp last. Blobs and
//! targets are content-addressed, so one the server has is not sent again.
//!
//! The server is not trusted: the pulled root chain must start at the
//! operator's pinned `1.root.json` (kept with the keys), and tough checks
//! every signature and version from there before anything is signed on top
//! of it. A server that lies, or a repository changed by someone else while
//! this runs, stops the command before the timestamp moves.

use super::transport::{chain, client_tls, https_connector};
use super::{BLOBS_DIR, FleetError, METADATA_DIR, TARGETS_DIR};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// The largest metadata file pulled (TUF metadata of a big fleet is far
/// smaller).
const MAX_METADATA_BYTES: usize = 16 << 20;
/// Root versions followed in one pull.
const MAX_ROOTS: u64 = 1024;

/// A repository on a web server.
pub struct Remote {
    url: Url,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    stall: Duration,
}

/// What a pull brought: each file (relative path) and its bytes' digest,
/// so a push sends only what the edit changed.
#[derive(Debug, Default)]
pub struct Pulled {
    files: BTreeMap<String, String>,
    timestamp: Vec<u8>,
}

/// What a push sent.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Files uploaded.
    pub uploaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs and targets the server had already.
    pub present: usize,
}

fn sha256_hex(bytes: &[u8]) -> String {
    outpost_signing::Digest::of(bytes).to_string()
}

impl Remote {
    /// The repository at `url` (`https://` or `http://`), authorised with
    /// `token` (sent as `Authorization: Bearer`) when given.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
        stall: Duration,
    ) -> Result<Self, FleetError> {
        let bad = |problem: String| FleetError::Fetch {
            url: url.to_owned(),
            problem,
        };
        let mut parsed = Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(bad(
                "a remote repository is an https:// or http:// URL".into()
            ));
        }
        if !parsed.path().ends_with('/') {
            parsed.set_path(&format!("{}/", parsed.path()));
        }
        let tls = client_tls(ca_file)?;
        let client = Client::builder(TokioExecutor::new()).build(https_connector(stall, &tls));
        Ok(Self {
            url: parsed,
            token,
            client,
            stall,
        })
    }

    /// The repository's URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    fn join(&self, path: &str) -> Result<Url, FleetError> {
        self.url.join(path).map_err(|e| FleetError::Fetch {
            url: format!("{}{path}", self.url),
            problem: e.to_string(),
        })
    }

    /// One request; the answer's status and body (at most `limit` bytes).
    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
        limit: usize,
    ) -> Result<(u16, Option<u64>, Vec<u8>), FleetError> {
        let url = self.join(path)?;
        let failed = |problem: String| FleetError::Fetch {
            url: url.to_string(),
            problem,
        };
        let mut request = hyper::Request::builder().method(method).uri(url.as_str());
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(format!("request failed: {}", chain(&e))))?;
            let status = response.status().as_u16();
            let length = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| failed(format!("connection broke: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        return Err(failed(format!("the answer is longer than {limit} bytes")));
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Ok((status, length, bytes))
        };
        // A whole exchange is bounded by the stall time per 64 KiB sent or
        // received, at least once.
        let budget = self.stall * (1 + (limit.min(MAX_METADATA_BYTES) / (64 << 10)) as u32);
        tokio::time::timeout(budget, work)
            .await
            .map_err(|_| failed(format!("no complete answer within {budget:?}")))?
    }

    /// Whether the server has the file at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool, FleetError> {
        Ok(self.head(path).await?.is_some())
    }

    /// GETs a metadata file; `None` when the server does not have it.
    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let (status, _, body) = self
            .exchange(hyper::Method::GET, path, Bytes::new(), MAX_METADATA_BYTES)
            .await?;
        match status {
            200 => Ok(Some(body)),
            404 | 410 => Ok(None),
            other => Err(self.status_error(path, other, &body)),
        }
    }

    /// The size of a file the server has, or `None`.
    async fn head(&self, path: &str) -> Result<Option<u64>, FleetError> {
        let (status, length, body) = self
            .exchange(hyper::Method::HEAD, path, Bytes::new(), 0)
            .await?;
        match status {
            200 => Ok(length),
            404 | 410 => Ok(None),
            other => Err(self.status_error(path, other, &body)),
        }
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), FleetError> {
        let size = bytes.len();
        let (status, _, body) = self
            .exchange(hyper::Method::PUT, path, Bytes::from(bytes), size.max(4096))
            .await?;
        match status {
            200..=299 => Ok(()),
            other => Err(self.status_error(path, other, &body)),
        }
    }

    fn status_error(&self, path: &str, status: u16, body: &[u8]) -> FleetError {
        let hint = match status {
            401 | 403 => {
                "; the server refused the credentials: give the upload token with --token-file"
            }
            405 => "; the server does not accept uploads here (nginx: dav_methods PUT)",
            _ => "",
        };
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        FleetError::Fetch {
            url: format!("{}{path}", self.url),
            problem: format!("HTTP status {status}{hint}: {}", text.trim()),
        }
    }

    /// Brings the repository's metadata into `mirror` (a fresh folder): the
    /// root chain from 1, the timestamp and the snapshot and targets it
    /// names. `pinned` is the operator's `1.root.json`: the server's must
    /// be the same bytes.
    pub async fn pull(&self, mirror: &Path, pinned: &Path) -> Result<Pulled, FleetError> {
        let pin = std::fs::read(pinned).map_err(|e| FleetError::Io {
            path: pinned.to_owned(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "{e}: the fleet's root metadata pinned beside the keys; copy the repository's metadata/1.root.json there from a trusted place (outpost fleet init writes it)"
                ),
            ),
        })?;
        let dir = mirror.join(METADATA_DIR);
        std::fs::create_dir_all(&dir).map_err(FleetError::io(&dir))?;
        let mut pulled = Pulled::default();
        let mut keep = |name: String, bytes: &[u8]| -> Result<(), FleetError> {
            let path = dir.join(&name);
            std::fs::write(&path, bytes).map_err(FleetError::io(&path))?;
            pulled
                .files
                .insert(format!("{METADATA_DIR}/{name}"), sha256_hex(bytes));
            Ok(())
        };
        for version in 1..=MAX_ROOTS {
            let name = format!("{version}.root.json");
            let Some(bytes) = self.get(&format!("{METADATA_DIR}/{name}")).await? else {
                if version == 1 {
                    return Err(FleetError::Fetch {
                        url: format!("{}{METADATA_DIR}/{name}", self.url),
                        problem: "not found: no fleet repository here; make one with outpost fleet init --repo URL".into(),
                    });
                }
                break;
            };
            if version == 1 && bytes != pin {
                return Err(FleetError::Fetch {
                    url: format!("{}{METADATA_DIR}/{name}", self.url),
                    problem: format!(
                        "is not the fleet root pinned in {}; this server holds another repository, or lies",
                        pinned.display()
                    ),
                });
            }
            keep(name, &bytes)?;
        }
        let timestamp = self
            .metadata(&format!("{METADATA_DIR}/timestamp.json"))
            .await?;
        keep("timestamp.json".into(), &timestamp)?;
        let snapshot_version = version_in::<tough::schema::Timestamp>(&timestamp, "snapshot.json")?;
        let name = format!("{snapshot_version}.snapshot.json");
        let snapshot = self.metadata(&format!("{METADATA_DIR}/{name}")).await?;
        keep(name, &snapshot)?;
        let targets_version = version_in::<tough::schema::Snapshot>(&snapshot, "targets.json")?;
        let name = format!("{targets_version}.targets.json");
        let targets = self.metadata(&format!("{METADATA_DIR}/{name}")).await?;
        keep(name, &targets)?;
        for sub in [TARGETS_DIR, BLOBS_DIR] {
            let path = mirror.join(sub);
            std::fs::create_dir_all(&path).map_err(FleetError::io(&path))?;
        }
        pulled.timestamp = timestamp;
        Ok(pulled)
    }

    async fn metadata(&self, path: &str) -> Result<Vec<u8>, FleetError> {
        self.get(path).await?.ok_or_else(|| FleetError::Fetch {
            url: format!("{}{path}", self.url),
            problem: "not found: the repository is incomplete".into(),
        })
    }

    /// Brings the target file `name` (as the mirror's targets metadata
    /// lists it) into the mirror, checked against its listed hash.
    pub async fn pull_target(
        &self,
        mirror: &Path,
        pulled: &mut Pulled,
        name: &str,
    ) -> Result<(), FleetError> {
        let Some((version_file, _)) = pulled
            .files
            .iter()
            .find(|(path, _)| path.ends_with(".targets.json"))
        else {
            return Ok(());
        };
        let bytes = std::fs::read(mirror.join(version_file))
            .map_err(FleetError::io(mirror.join(version_file)))?;
        let targets: tough::schema::Signed<tough::schema::Targets> = serde_json::from_slice(&bytes)
            .map_err(|e| FleetError::Target {
                repo: self.url.to_string(),
                target: version_file.clone(),
                problem: format!("not targets metadata: {e}"),
            })?;
        let Some(target) = targets
            .signed
            .targets
            .iter()
            .find(|(t, _)| t.raw() == name)
            .map(|(_, t)| t)
        else {
            return Ok(()); // the caller reports a missing target
        };
        let file_name = super::target_file_name(name, target);
        let file = format!("{TARGETS_DIR}/{file_name}");
        let body = self.metadata(&file).await?;
        let listed = file_name.split_once('.').map_or("", |(hex, _)| hex);
        if sha256_hex(&body) != format!("sha256:{listed}") {
            return Err(FleetError::Target {
                repo: self.url.to_string(),
                target: name.to_owned(),
                problem: "the server's file does not match the signed hash".into(),
            });
        }
        let path = mirror.join(&file);
        std::fs::write(&path, &body).map_err(FleetError::io(&path))?;
        pulled.files.insert(file, sha256_hex(&body));
        Ok(())
    }

    /// Uploads what the edit in `mirror` changed since `pulled`: blobs,
    /// targets, root, targets and snapshot metadata, and the timestamp last.
    /// Refuses to start when the server's timestamp is no longer the one
    /// pulled (someone else published meanwhile).
    pub async fn push(&self, mirror: &Path, pulled: &Pulled) -> Result<Pushed, FleetError> {
        let now = self.get(&format!("{METADATA_DIR}/timestamp.json")).await?;
        if !pulled.timestamp.is_empty() && now.as_deref() != Some(pulled.timestamp.as_slice()) {
            return Err(FleetError::Fetch {
                url: format!("{}{METADATA_DIR}/timestamp.json", self.url),
                problem: "changed while this command ran (another publisher?); nothing of this edit that devices read was uploaded: run it again".into(),
            });
        }
        let mut files: Vec<(u8, u64, String, PathBuf)> = Vec::new();
        for sub in [BLOBS_DIR, TARGETS_DIR, METADATA_DIR] {
            let dir = mirror.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(FleetError::io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !entry.path().is_file() {
                    continue;
                }
                let number = name
                    .split('.')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                // Blobs, targets, roots by version, targets metadata,
                // snapshot metadata, timestamp.
                let rank = match sub {
                    BLOBS_DIR => 0,
                    TARGETS_DIR => 1,
                    _ if name.ends_with(".root.json") => 2,
                    _ if name.ends_with(".targets.json") => 3,
                    _ if name == "timestamp.json" => 5,
                    _ => 4,
                };
                files.push((rank, number, format!("{sub}/{name}"), entry.path()));
            }
        }
        files.sort();
        let mut pushed = Pushed::default();
        for (rank, _, relative, path) in files {
            let bytes = std::fs::read(&path).map_err(FleetError::io(&path))?;
            if pulled.files.get(&relative) == Some(&sha256_hex(&bytes)) {
                continue;
            }
            // Content-addressed: the same name holds the same bytes.
            if rank <= 1 && self.head(&relative).await? == Some(bytes.len() as u64) {
                pushed.present += 1;
                continue;
            }
            pushed.bytes += bytes.len() as u64;
            pushed.uploaded += 1;
            self.put(&relative, bytes).await?;
        }
        Ok(pushed)
    }
}

/// The version that `meta[file]` names in timestamp or snapshot metadata.
fn version_in<T>(bytes: &[u8], file: &str) -> Result<u64, FleetError>
where
    T: serde::de::DeserializeOwned + HasMeta,
{
    let signed: tough::schema::Signed<T> =
        serde_json::from_slice(bytes).map_err(|e| FleetError::Target {
            repo: String::new(),
            target: file.to_owned(),
            problem: format!("metadata that does not parse: {e}"),
        })?;
    signed
        .signed
        .version_of(file)
        .ok_or_else(|| FleetError::Target {
            repo: String::new(),
            target: file.to_owned(),
            problem: "not listed in the metadata above it".into(),
        })
}

/// Timestamp and snapshot metadata both list versions of the files below.
trait HasMeta {
    fn version_of(&self, file: &str) -> Option<u64>;
}

impl HasMeta for tough::schema::Timestamp {
    fn version_of(&self, file: &str) -> Option<u64> {
        self.meta.get(file).map(|m| m.version.get())
    }
}

impl HasMeta for tough::schema::Snapshot {
    fn version_of(&self, file: &str) -> Option<u64> {
        self.meta.get(file).map(|m| m.version.get())
    }
}
