//! nginx from Debian as a real epoll HTTP server inside a pod: a generated
//! config in a private directory (one process, `use epoll`), serving the
//! files the caller puts in its document root, or proxying every request to
//! one upstream (nginx then reads responses the way a sidecar does, sizing
//! its reads with FIONREAD). The process is killed and the directory
//! removed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{unique_tag, Pod, PodProcess};

/// How nginx sends file bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxSend {
    /// `sendfile on` (Debian's default configuration).
    Sendfile,
    /// `sendfile off`: read into user buffers, then write(2).
    Write,
}

pub struct Nginx {
    process: PodProcess,
    dir: PathBuf,
    /// The address nginx listens on inside its pod (0.0.0.0:port).
    pub port: u16,
}

impl Nginx {
    /// Starts nginx in `pod` on `port` and waits until it accepts.
    /// Put files in [`Nginx::docroot`] (before or after the start).
    pub fn start(pod: &Pod, port: u16, send: NginxSend) -> Result<Self> {
        Self::start_with(pod, port, send, None)
    }

    /// Starts nginx in `pod` on `port` as a reverse proxy to `upstream`
    /// (`proxy_pass`, response buffering on) and waits until it accepts.
    pub fn start_proxy(pod: &Pod, port: u16, upstream: SocketAddr) -> Result<Self> {
        Self::start_with(pod, port, NginxSend::Sendfile, Some(upstream))
    }

    fn start_with(
        pod: &Pod,
        port: u16,
        send: NginxSend,
        upstream: Option<SocketAddr>,
    ) -> Result<Self> {
        let dir = PathBuf::from("/run/meshlane-test").join(unique_tag("nginx-"));
        let www = dir.join("www");
        std::fs::create_dir_all(&www)
            .with_context(|| format!("creating nginx directory {}", www.display()))?;
        let cfg_path = dir.join("nginx.conf");
        std::fs::write(&cfg_path, config(&dir, port, send, upstream))
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        let dir_s = dir.to_string_lossy().into_owned();
        let cfg_s = cfg_path.to_string_lossy().into_owned();
        let err_s = dir.join("error.log").to_string_lossy().into_owned();
        let spawned = pod.spawn(&["nginx", "-p", &dir_s, "-c", &cfg_s, "-e", &err_s]);
        let process = match spawned {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut nginx = Self { process, dir, port };
        nginx.wait_ready(pod)?;
        Ok(nginx)
    }

    /// Directory served at `/`.
    pub fn docroot(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// nginx's error log (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, pod: &Pod) -> Result<()> {
        let to: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.process.child.try_wait()? {
                bail!(
                    "nginx in pod {} exited at start ({status}): {}",
                    pod.name,
                    self.error_log().trim()
                );
            }
            let up = pod
                .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())?;
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "nginx in pod {} did not accept on port {} within 10 s: {}",
            pod.name,
            self.port,
            self.error_log().trim()
        )
    }
}

fn config(dir: &Path, port: u16, send: NginxSend, upstream: Option<SocketAddr>) -> String {
    let d = dir.display();
    let content = match upstream {
        Some(up) => format!("location / {{\n      proxy_pass http://{up};\n    }}"),
        None => format!("root {d}/www;"),
    };
    let sendfile = match send {
        NginxSend::Sendfile => "on",
        NginxSend::Write => "off",
    };
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{\n  use epoll;\n  worker_connections 1024;\n}}\n\
         http {{\n  access_log off;\n  sendfile {sendfile};\n  keepalive_timeout 0;\n\
         \x20 default_type application/octet-stream;\n\
         \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n    listen {port};\n    {content}\n  }}\n}}\n"
    )
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
