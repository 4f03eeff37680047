//! An HTTP proxy on 127.0.0.1 that sits between layermend and a test registry and injects
//! scripted faults: an error status for chosen requests, or a connection closed in the
//! middle of a response body.
//!
//! Each request gets its own upstream connection with `Connection: close`, and the client
//! sees `Connection: close` too, so a response ends where the upstream closes and no
//! request body or chunk framing needs parsing on the forwarding path.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which matching requests a [`Rule`] applies to.
#[derive(Clone, Copy, Debug)]
pub enum When {
    /// Only the nth matching request, counting from 1.
    Nth(usize),
    /// Every matching request.
    Always,
}

/// What a [`Rule`] does to a request.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Responds with `status` without forwarding. A 429 carries an OCI `TOOMANYREQUESTS`
    /// error body, other statuses a plain text body.
    Status {
        status: u16,
        retry_after: Option<u32>,
    },
    /// Forwards the request, passes on the response head and the first `after` bytes of
    /// the body, then closes the connection.
    CutBody { after: usize },
}

/// One scripted fault: requests with `method` whose path contains `path` get `action`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: String,
    pub path: String,
    pub when: When,
    pub action: Action,
}

impl Rule {
    pub fn status(method: &str, path: &str, when: When, status: u16) -> Rule {
        Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            when,
            action: Action::Status {
                status,
                retry_after: None,
            },
        }
    }

    /// Returns a rule that responds with 429 and `Retry-After: seconds`.
    pub fn too_many_requests(method: &str, path: &str, when: When, seconds: u32) -> Rule {
        Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            when,
            action: Action::Status {
                status: 429,
                retry_after: Some(seconds),
            },
        }
    }

    pub fn cut_body(method: &str, path: &str, when: When, after: usize) -> Rule {
        Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            when,
            action: Action::CutBody { after },
        }
    }
}

/// A rule with its counters.
struct RuleState {
    rule: Rule,
    matched: usize,
    fired: usize,
}

struct Shared {
    upstream_port: u16,
    rules: Mutex<Vec<RuleState>>,
    /// `METHOD PATH` of every request, in arrival order.
    requests: Mutex<Vec<String>>,
    /// Whether `Range` headers are dropped, so the registry sends whole blobs.
    ignore_range: bool,
}

/// A running proxy. Dropping it stops accepting connections and joins the accept thread.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, rules: Vec<Rule>) -> FaultProxy {
        FaultProxy::start_with(upstream_port, rules, false)
    }

    /// Starts a proxy like [`FaultProxy::start`] that also drops `Range` headers, as a
    /// registry without range support would ignore them.
    pub fn start_ignoring_range(upstream_port: u16, rules: Vec<Rule>) -> FaultProxy {
        FaultProxy::start_with(upstream_port, rules, true)
    }

    fn start_with(upstream_port: u16, rules: Vec<Rule>, ignore_range: bool) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream_port,
            rules: Mutex::new(
                rules
                    .into_iter()
                    .map(|rule| RuleState {
                        rule,
                        matched: 0,
                        fired: 0,
                    })
                    .collect(),
            ),
            requests: Mutex::new(Vec::new()),
            ignore_range,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::spawn(move || accept_loop(&listener, &shared, &stop))
        };
        FaultProxy {
            port,
            shared,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Full image reference for `repository:tag` through this proxy.
    pub fn image(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// Returns how often rule `index` (in the order given) was applied.
    pub fn fired(&self, index: usize) -> usize {
        self.shared.rules.lock().unwrap()[index].fired
    }

    /// `METHOD PATH` of every request seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let shared = shared.clone();
                // Connection threads end when either side closes. They are not joined,
                // because a client may keep an idle connection open past the test.
                std::thread::spawn(move || {
                    let _ = handle(client, &shared);
                });
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A parsed request head and the body bytes read along with it.
struct RequestHead {
    method: String,
    path: String,
    lines: Vec<String>,
    content_length: Option<u64>,
    chunked: bool,
    rest: Vec<u8>,
}

fn handle(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let Some(head) = read_head(&mut client)? else {
        return Ok(());
    };
    shared
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", head.method, head.path));
    match choose_action(shared, &head) {
        Some(Action::Status {
            status,
            retry_after,
        }) => answer_status(&mut client, head, status, retry_after),
        Some(Action::CutBody { after }) => forward(client, head, shared, Some(after)),
        None => forward(client, head, shared, None),
    }
}

/// Counts the request against every matching rule and returns the first action due.
fn choose_action(shared: &Shared, head: &RequestHead) -> Option<Action> {
    let mut rules = shared.rules.lock().unwrap();
    let mut chosen = None;
    for state in rules.iter_mut() {
        if state.rule.method != head.method || !head.path.contains(&state.rule.path) {
            continue;
        }
        state.matched += 1;
        let due = match state.rule.when {
            When::Nth(n) => state.matched == n,
            When::Always => true,
        };
        if due && chosen.is_none() {
            state.fired += 1;
            chosen = Some(state.rule.action);
        }
    }
    chosen
}

fn read_head(client: &mut TcpStream) -> io::Result<Option<RequestHead>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(position) = find(&buffer, b"\r\n\r\n") {
            break position;
        }
        let read = client.read(&mut chunk)?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
        // A TLS handshake record gets a plain HTTP 400, as from the registry itself, so a
        // client that tries HTTPS first falls back to HTTP.
        if buffer.first() == Some(&0x16) {
            client.write_all(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            )?;
            return Ok(None);
        }
    };

    let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let rest = buffer[end + 4..].to_vec();
    let mut lines = text.split("\r\n").map(str::to_owned);
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let lines: Vec<String> = lines.collect();

    let header = |name: &str| {
        lines.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let content_length = header("content-length").and_then(|value| value.parse().ok());
    let chunked = header("transfer-encoding").is_some_and(|value| value.contains("chunked"));
    Ok(Some(RequestHead {
        method,
        path,
        lines,
        content_length,
        chunked,
        rest,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Reads and drops the request body, so the client sees the response and not a reset.
fn discard_body(client: &mut TcpStream, head: &RequestHead) -> io::Result<()> {
    let mut chunk = [0u8; 65536];
    if let Some(length) = head.content_length {
        let mut remaining = length.saturating_sub(head.rest.len() as u64);
        while remaining > 0 {
            let read = client.read(&mut chunk)?;
            if read == 0 {
                break;
            }
            remaining = remaining.saturating_sub(read as u64);
        }
    } else if head.chunked {
        // The last chunk of a chunked body is `0\r\n\r\n` without trailers.
        let mut tail = head.rest.clone();
        while !tail.ends_with(b"0\r\n\r\n") {
            let read = client.read(&mut chunk)?;
            if read == 0 {
                break;
            }
            tail.extend_from_slice(&chunk[..read]);
            let keep = tail.len().saturating_sub(8);
            tail.drain(..keep);
        }
    }
    Ok(())
}

fn answer_status(
    client: &mut TcpStream,
    head: RequestHead,
    status: u16,
    retry_after: Option<u32>,
) -> io::Result<()> {
    discard_body(client, &head)?;
    let (reason, content_type, body) = match status {
        429 => (
            "Too Many Requests",
            "application/json",
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"fault injected by the test proxy"}]}"#,
        ),
        500 => ("Internal Server Error", "text/plain", "fault injected\n"),
        503 => ("Service Unavailable", "text/plain", "fault injected\n"),
        _ => ("Fault", "text/plain", "fault injected\n"),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(seconds) = retry_after {
        response.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    response.push_str("\r\n");
    if head.method != "HEAD" {
        response.push_str(body);
    }
    client.write_all(response.as_bytes())?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Sends the request upstream and the response back, cut after `cut_after` body bytes
/// when set.
fn forward(
    mut client: TcpStream,
    head: RequestHead,
    shared: &Shared,
    cut_after: Option<usize>,
) -> io::Result<()> {
    let mut upstream = TcpStream::connect(("127.0.0.1", shared.upstream_port))?;
    let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.path);
    for line in &head.lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let dropped = name == "connection"
            || name == "keep-alive"
            || (shared.ignore_range && name == "range");
        if !dropped {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    upstream.write_all(request.as_bytes())?;
    upstream.write_all(&head.rest)?;

    // The rest of the request body flows on its own thread while the response is read.
    let mut client_reader = client.try_clone()?;
    let mut upstream_writer = upstream.try_clone()?;
    let body_thread = std::thread::spawn(move || {
        let _ = io::copy(&mut client_reader, &mut upstream_writer);
    });

    let result = relay_response(&mut upstream, &mut client, cut_after);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = body_thread.join();
    result
}

fn relay_response(
    upstream: &mut TcpStream,
    client: &mut TcpStream,
    cut_after: Option<usize>,
) -> io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(position) = find(&buffer, b"\r\n\r\n") {
            break position + 4;
        }
        let read = upstream.read(&mut chunk)?;
        if read == 0 {
            client.write_all(&buffer)?;
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let Some(limit) = cut_after else {
        client.write_all(&buffer)?;
        io::copy(upstream, client)?;
        return Ok(());
    };
    let mut body_sent = (buffer.len() - head_end).min(limit);
    client.write_all(&buffer[..head_end + body_sent])?;
    while body_sent < limit {
        let read = upstream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        let take = read.min(limit - body_sent);
        client.write_all(&chunk[..take])?;
        body_sent += take;
    }
    client.flush()?;
    Ok(())
}
