//! Real servers for the tests, started on loopback: Debian's `nginx` serving
//! a folder (with an access log the tests read), and a small fault-injecting
//! relay in front of a server.

use crate::Scratch;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nginx binary: $OUTPOST_NGINX, else `nginx` on the path or in /usr/sbin.
fn nginx_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("OUTPOST_NGINX") {
        return path.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let path = Path::new(dir).join("nginx");
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "nginx is not installed: the fleet tests serve repositories with Debian's nginx (apt-get install nginx-light; tests/run.sh installs it)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server did not listen on port {port} within 20 s");
}

/// One request in nginx's access log.
#[derive(Debug, Clone)]
pub struct Access {
    /// The method (GET, HEAD, PUT).
    pub method: String,
    /// The path asked for.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// The Range header, or "-".
    pub range: String,
}

/// Debian's nginx serving one folder on a loopback port, in the foreground
/// as the current user; stopped when dropped.
pub struct Nginx {
    child: Child,
    port: u16,
    dir: Scratch,
    tls: bool,
}

impl Nginx {
    /// Serves `root`.
    pub fn start(root: &Path) -> Self {
        Self::launch(root, None, None)
    }

    /// Serves `root` and accepts uploads into it (WebDAV `PUT`, as a fleet
    /// operator's server would) from requests that bring
    /// `Authorization: Bearer TOKEN`; others get 401.
    pub fn start_uploads(root: &Path, token: &str) -> Self {
        Self::launch(root, None, Some(token))
    }

    /// Serves `root` over HTTPS only, with this certificate chain and key
    /// (PEM files); [`Nginx::url`] is then `https://127.0.0.1:PORT/`.
    pub fn start_tls(root: &Path, cert: &Path, key: &Path) -> Self {
        Self::launch(root, Some((cert, key)), None)
    }

    fn launch(root: &Path, tls: Option<(&Path, &Path)>, upload_token: Option<&str>) -> Self {
        let dir = Scratch::new();
        let prefix = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let (ssl, certificate) = match tls {
            Some((cert, key)) => (
                " ssl",
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
            ),
            None => ("", String::new()),
        };
        let location = match upload_token {
            Some(token) => format!(
                r#"dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            set $refuse "";
            if ($request_method = PUT) {{ set $refuse "yes"; }}
            if ($http_authorization = "Bearer {token}") {{ set $refuse ""; }}
            if ($refuse = "yes") {{ return 401; }}"#
            ),
            None => String::new(),
        };
        for _attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                r#"master_process off;
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format outpost '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {prefix}/access.log outpost;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificate}
        root {root};
        location / {{
            {location}
        }}
    }}
}}
"#,
                root = root.display()
            );
            let conf_path = dir.write("nginx.conf", conf);
            let error_log = dir.path().join("error.log");
            let mut child = Command::new(nginx_bin())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&error_log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // A port taken between probing and binding: try another.
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(Some(_)) = child.try_wait() {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                assert!(
                    log.contains("Address already in use"),
                    "nginx failed:\n{log}"
                );
                continue;
            }
            wait_for_port(port, &mut child, &error_log);
            return Self {
                child,
                port,
                dir,
                tls: tls.is_some(),
            };
        }
        panic!("nginx found no free port in 5 attempts");
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/`, or `https://` over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Every request logged so far.
    pub fn log(&self) -> Vec<Access> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(5, ' ');
                let method = parts.next()?.to_owned();
                Some(Access {
                    method,
                    path: parts.next()?.to_owned(),
                    status: parts.next()?.parse().ok()?,
                    bytes: parts.next()?.parse().ok()?,
                    range: parts.next()?.trim_matches('"').to_owned(),
                })
            })
            .collect()
    }

    /// Forgets the log so far.
    pub fn clear_log(&self) {
        let _ = std::fs::write(self.dir.path().join("access.log"), "");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay in front of an HTTP/1.1 server that makes each request its own
/// connection (`Connection: close` upstream) and cuts the first answer to
/// a path containing `cut_path` after `cut_after` bytes, as a server whose
/// connection drops mid-file would.
pub struct CuttingRelay {
    port: u16,
    cuts: Arc<AtomicUsize>,
}

impl CuttingRelay {
    /// Relays to `upstream` (a loopback port).
    pub fn start(upstream: u16, cut_path: &str, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let cut_done = Arc::new(Mutex::new(false));
        let cut_path = cut_path.to_owned();
        let counter = cuts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let cut_path = cut_path.clone();
                let cut_done = cut_done.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = relay(client, upstream, &cut_path, cut_after, &cut_done, &counter);
                });
            }
        });
        Self { port, cuts }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// How many answers were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

/// A static file server over a folder that sends every file under
/// `/blobs/` one byte each `every`, never silent for long: the slow
/// retrieval attack. Other files go at once.
pub struct Trickle {
    port: u16,
}

impl Trickle {
    /// Serves `root` on a loopback port until the test ends.
    pub fn start(root: &Path, every: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = root.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = trickle(client, &root, every);
                });
            }
        });
        Self { port }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

/// An HTTP request's head, up to its blank line; `None` if the client
/// closed first.
fn read_head(client: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn trickle(mut client: TcpStream, root: &Path, every: Duration) -> std::io::Result<()> {
    let Some(head) = read_head(&mut client)? else {
        return Ok(());
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let Ok(body) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
        return client.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    client.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    if !path.starts_with("/blobs/") {
        return client.write_all(&body);
    }
    for b in body {
        client.write_all(&[b])?;
        std::thread::sleep(every);
    }
    Ok(())
}

fn relay(
    mut client: TcpStream,
    upstream: u16,
    cut_path: &str,
    cut_after: usize,
    cut_done: &Mutex<bool>,
    cuts: &AtomicUsize,
) -> std::io::Result<()> {
    let Some(text) = read_head(&mut client)? else {
        return Ok(());
    };
    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
    let mut lines: Vec<&str> = text
        .trim_end()
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let request = format!("{}\r\n\r\n", lines.join("\r\n"));
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    server.write_all(request.as_bytes())?;
    let cut = path.contains(cut_path) && {
        let mut done = cut_done.lock().unwrap();
        !std::mem::replace(&mut *done, true)
    };
    let mut sent = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = if cut { n.min(cut_after - sent) } else { n };
        client.write_all(&buf[..n])?;
        sent += n;
        if cut && sent >= cut_after {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Debian's `docker-registry` (the CNCF distribution registry) on a
/// loopback port, storing in a scratch folder; stopped when dropped.
pub struct Registry {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Registry {
    /// Starts a registry.
    pub fn start() -> Self {
        let bin = std::env::var_os("OUTPOST_DOCKER_REGISTRY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
        assert!(
            bin.is_file(),
            "docker-registry is not installed: the OCI tests push to Debian's docker-registry (apt-get install docker-registry; tests/run.sh installs it)"
        );
        let dir = Scratch::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.write(
                "config.yml",
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display()
                ),
            );
            let log = dir.path().join("registry.log");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(Some(_)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    text.contains("address already in use"),
                    "registry failed:\n{text}"
                );
                continue;
            }
            wait_for_port(port, &mut child, &log);
            return Self {
                child,
                port,
                _dir: dir,
            };
        }
        panic!("docker-registry found no free port in 5 attempts");
    }

    /// `HOST:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
