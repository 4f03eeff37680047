//! A private Docker engine for the BuildKit tests: `dockerd` on a socket in a temporary
//! directory, and optionally on a loopback TCP port with mutual TLS, without a bridge
//! network or iptables rules, stopped by PID on drop.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::auth::{TestPki, free_port};
use super::require_tool;

/// Time dockerd may take before its socket responds.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time dockerd and its containerd may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running dockerd. It starts its own containerd as a child, and drop stops both.
pub struct Dockerd {
    child: Child,
    dir: TempDir,
    /// The loopback port of the TLS listener, when there is one.
    tls_port: Option<u16>,
}

impl Dockerd {
    /// Starts dockerd and waits until its API responds to `GET /_ping`.
    pub fn start() -> Dockerd {
        Dockerd::start_with(None)
    }

    /// Starts dockerd with a second listener on `tcp://127.0.0.1:PORT` that requires
    /// TLS with a client certificate signed by the test CA (`--tlsverify`), serving the
    /// PKI's server certificate.
    pub fn start_with_tls(pki: &TestPki) -> Dockerd {
        Dockerd::start_with(Some(pki))
    }

    fn start_with(pki: Option<&TestPki>) -> Dockerd {
        require_tool("dockerd");
        let dir = tempfile::Builder::new()
            .prefix("layermend-dockerd-")
            .tempdir()
            .expect("create the dockerd directory");
        let root = dir.path();
        let log = fs_err::File::create(root.join("dockerd.log"))
            .unwrap()
            .into_parts()
            .0;
        let mut command = Command::new("dockerd");
        command
            .arg("-H")
            .arg(format!("unix://{}", root.join("docker.sock").display()));
        let tls_port = pki.map(|pki| {
            let port = free_port();
            command
                .arg("-H")
                .arg(format!("tcp://127.0.0.1:{port}"))
                .arg("--tlsverify")
                .arg("--tlscacert")
                .arg(pki.ca_cert())
                .arg("--tlscert")
                .arg(pki.dir.path().join("server.crt"))
                .arg("--tlskey")
                .arg(pki.dir.path().join("server.key"));
            port
        });
        let child = command
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .args(["--bridge=none", "--iptables=false", "--ip-forward=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut dockerd = Dockerd {
            child,
            dir,
            tls_port,
        };
        dockerd.wait_ready();
        dockerd
    }

    /// Returns the `unix://` address of the engine's socket.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Returns the `tcp://` address of the TLS listener.
    pub fn tls_address(&self) -> String {
        let port = self.tls_port.expect("dockerd started with start_with_tls");
        format!("tcp://127.0.0.1:{port}")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn log(&self) -> String {
        fs_err::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the 20.10 docker client against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("/usr/bin/docker")
            .env("DOCKER_HOST", self.address())
            .args(args)
            .output()
            .expect("run /usr/bin/docker")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "dockerd exited with {status} before responding\n{}",
                    self.log()
                );
            }
            let tcp_ready = self
                .tls_port
                .is_none_or(|port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
            if ping(&self.socket()) && tcp_ready {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not respond within {} s\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sends `GET /_ping` over the socket and returns whether the engine responded `200`.
fn ping(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// Returns the PIDs of the processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The parent PID is the second field after the parenthesised command name.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a PID this test started and a valid signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.contains(") Z "))
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id();
        // containerd and the shims are dockerd's children. They are listed before dockerd
        // exits, because they are reparented after that.
        let mut started = children(pid);
        for child in started.clone() {
            started.extend(children(child));
        }
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for child in started {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while alive(child) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(child) {
                signal(child, libc::SIGKILL);
            }
        }
        // The overlay mounts under the data root are gone once dockerd has stopped, so
        // the temporary directory can be removed.
    }
}
