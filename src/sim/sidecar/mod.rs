//! The sidecar proxy of a simulated pod: Istio-like, running as the proxy
//! uid/gid (1337), outbound listener 15001 and inbound listener 15006, both
//! forwarding to the connection's original destination; inbound it connects
//! to the app from 127.0.0.6 (::6) like Envoy in Istio does.
//!
//! Two implementations, one interface ([`Sidecar`]):
//! - Envoy ([`envoy`]), the default wherever it is installed ([`binary`]
//!   says where it is looked for; `make` installs it), with the bootstrap
//!   from [`envoy_bootstrap`];
//! - HAProxy from Debian ([`haproxy`]), the second proxy.

pub mod binary;
mod envoy;
pub mod envoy_bootstrap;
mod haproxy;

pub use binary::find_on_path;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Pod, PodProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// L4: bytes are forwarded (HAProxy `mode tcp`, Envoy tcp_proxy).
    Tcp,
    /// L7: HTTP/1.1 requests are parsed and routed (HAProxy `mode http`,
    /// Envoy's HTTP connection manager).
    Http,
}

/// Which proxy plays the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarProxy {
    Haproxy,
    Envoy,
}

impl SidecarProxy {
    /// Also the name of its binary.
    pub fn name(self) -> &'static str {
        match self {
            SidecarProxy::Haproxy => "haproxy",
            SidecarProxy::Envoy => "envoy",
        }
    }

    /// `auto` (Envoy where installed, else HAProxy), `haproxy` or `envoy`;
    /// an explicit proxy must be installed.
    pub fn choose(choice: &str) -> Result<Self> {
        let proxy = match choice {
            "auto" => return Ok(Self::detect()),
            "haproxy" => SidecarProxy::Haproxy,
            "envoy" => SidecarProxy::Envoy,
            other => bail!("unknown sidecar `{other}` (known: auto, haproxy, envoy)"),
        };
        proxy.locate()?;
        Ok(proxy)
    }

    /// How reports name it: "Envoy (envoy  version: ...)" / "HAProxy (...)".
    pub fn describe(self) -> String {
        let name = match self {
            SidecarProxy::Haproxy => "HAProxy",
            SidecarProxy::Envoy => "Envoy",
        };
        match self.version() {
            Some(v) => format!("{name} ({v})"),
            None => name.to_string(),
        }
    }

    /// Envoy where installed (see [`binary::envoy`]), HAProxy otherwise.
    pub fn detect() -> Self {
        if binary::envoy().is_ok() {
            SidecarProxy::Envoy
        } else {
            SidecarProxy::Haproxy
        }
    }

    /// Full path of the proxy's binary, or an error naming what is missing.
    pub fn locate(self) -> Result<PathBuf> {
        Ok(match self {
            SidecarProxy::Haproxy => binary::haproxy()?,
            SidecarProxy::Envoy => binary::envoy()?,
        })
    }

    /// The first line of `<binary> --version` (or `-v` for HAProxy), runs
    /// of blanks made one.
    pub fn version(self) -> Option<String> {
        let flag = match self {
            SidecarProxy::Haproxy => "-v",
            SidecarProxy::Envoy => "--version",
        };
        let out = std::process::Command::new(self.locate().ok()?)
            .arg(flag)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// The Envoy node id of `pod`'s sidecar, as Istio names it
/// (`sidecar~<ip>~<pod>.default~default.svc.cluster.local`): what a
/// control plane keys a per-node snapshot by
/// ([`crate::sim::xds::AdsServer::update_node`]).
pub fn node_id(pod: &Pod) -> String {
    format!(
        "sidecar~{}~{}.default~default.svc.cluster.local",
        pod.ip4, pod.name
    )
}

/// How to start a sidecar.
#[derive(Debug, Clone, Copy)]
pub struct SidecarOptions {
    pub proxy: SidecarProxy,
    pub mode: SidecarMode,
    pub uid: u32,
    pub gid: u32,
}

impl SidecarOptions {
    /// Istio's defaults: uid = gid = 1337.
    pub fn istio(proxy: SidecarProxy, mode: SidecarMode) -> Self {
        Self {
            proxy,
            mode,
            uid: 1337,
            gid: 1337,
        }
    }
}

/// Where a running sidecar answers questions about its counters.
enum Control {
    /// HAProxy's stats socket (`show stat`).
    HaproxyStats(PathBuf),
    /// Envoy's admin API on a unix socket (`GET /stats`).
    EnvoyAdmin(PathBuf),
}

pub struct Sidecar {
    pub process: PodProcess,
    pub proxy: SidecarProxy,
    pub mode: SidecarMode,
    control: Control,
    dir: PathBuf,
}

impl Sidecar {
    /// Starts an HAProxy sidecar in `pod` (uid = gid = `uid`) and waits
    /// until both listeners accept.
    pub fn start(pod: &Pod, mode: SidecarMode, uid: u32) -> Result<Self> {
        Self::start_as(pod, mode, uid, uid)
    }

    /// Like [`Sidecar::start`] with a proxy gid that differs from the uid.
    pub fn start_as(pod: &Pod, mode: SidecarMode, uid: u32, gid: u32) -> Result<Self> {
        Self::launch(
            pod,
            &SidecarOptions {
                proxy: SidecarProxy::Haproxy,
                mode,
                uid,
                gid,
            },
        )
    }

    /// Starts the sidecar `o` describes and waits until it is ready.
    pub fn launch(pod: &Pod, o: &SidecarOptions) -> Result<Self> {
        Self::launch_with(pod, o, None)
    }

    /// Starts an Envoy sidecar that takes its listeners and clusters over
    /// ADS from the control plane on `ads` (a unix socket, like Istio's
    /// pilot-agent XDS socket; see [`crate::sim::xds`]) and waits until it
    /// is ready, which Envoy is only once that config arrived.
    pub fn launch_ads(pod: &Pod, o: &SidecarOptions, ads: &Path) -> Result<Self> {
        if o.proxy != SidecarProxy::Envoy {
            bail!("only Envoy sidecars take config over ADS");
        }
        Self::launch_with(pod, o, Some(ads))
    }

    fn launch_with(pod: &Pod, o: &SidecarOptions, ads: Option<&Path>) -> Result<Self> {
        let dir = PathBuf::from("/run/meshlane-test").join(format!("sidecar-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        let (process, control) = match o.proxy {
            SidecarProxy::Haproxy => {
                let (process, stats) = haproxy::spawn(pod, o, &dir)?;
                (process, Control::HaproxyStats(stats))
            }
            SidecarProxy::Envoy => {
                let (process, admin) = envoy::spawn(pod, o, &dir, ads)?;
                (process, Control::EnvoyAdmin(admin))
            }
        };
        let mut sc = Self {
            process,
            proxy: o.proxy,
            mode: o.mode,
            control,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if sc.ready() {
                return Ok(sc);
            }
            if let Ok(Some(status)) = sc.process.child.try_wait() {
                bail!(
                    "{} sidecar in pod {} exited during start ({status}){}",
                    o.proxy.name(),
                    pod.name,
                    sc.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} sidecar in pod {} did not come up within 15 s{}",
            o.proxy.name(),
            pod.name,
            sc.log_tail()
        )
    }

    fn ready(&self) -> bool {
        match &self.control {
            Control::HaproxyStats(sock) => haproxy::stats(sock).is_ok(),
            Control::EnvoyAdmin(sock) => envoy::ready(sock),
        }
    }

    /// The end of the proxy's log, if it writes one, for error messages.
    fn log_tail(&self) -> String {
        let log = match self.proxy {
            SidecarProxy::Envoy => envoy::log_path(&self.dir),
            SidecarProxy::Haproxy => return String::new(),
        };
        tail_of(&log)
    }

    /// HAProxy `show stat` rows: (proxy name, service name, total sessions).
    /// Envoy sidecars have no such rows (an error).
    pub fn stats(&self) -> Result<Vec<(String, String, u64)>> {
        match &self.control {
            Control::HaproxyStats(sock) => haproxy::stats(sock),
            Control::EnvoyAdmin(_) => bail!("an Envoy sidecar has no HAProxy stats"),
        }
    }

    /// Connections the outbound or inbound listener accepted
    /// (`frontend`: "outbound" or "inbound"), 0 when unreadable.
    pub fn sessions(&self, frontend: &str) -> u64 {
        match &self.control {
            Control::HaproxyStats(sock) => haproxy::frontend_sessions(sock, frontend),
            Control::EnvoyAdmin(sock) => envoy::listener_connections(sock, frontend),
        }
    }

    /// One Envoy stat (counter or gauge) by its exact name; None for HAProxy
    /// or when unreadable.
    pub fn envoy_stat(&self, name: &str) -> Option<u64> {
        match &self.control {
            Control::EnvoyAdmin(sock) => envoy::stat(sock, name),
            Control::HaproxyStats(_) => None,
        }
    }

    /// What the outbound or inbound side (`side`: "outbound" or "inbound")
    /// forwarded, in the unit its mode forwards: connections in tcp mode,
    /// HTTP requests in http mode (an L7 proxy pools upstream connections,
    /// so one request need not open one connection on the next hop). 0 when
    /// unreadable.
    pub fn forwarded(&self, side: &str) -> u64 {
        match (&self.control, self.mode) {
            (_, SidecarMode::Tcp) => self.sessions(side),
            (Control::HaproxyStats(sock), SidecarMode::Http) => {
                haproxy::frontend_requests(sock, side)
            }
            (Control::EnvoyAdmin(sock), SidecarMode::Http) => envoy::http_requests(sock, side),
        }
    }
}

/// The last lines of a log file, as " (log: ...)" or "".
fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return String::new();
    }
    let joined: Vec<&str> = lines.into_iter().rev().collect();
    format!(" (log: {})", joined.join(" | "))
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `argv` in `pod` as the proxy's uid/gid from its first instruction
/// (through `setpriv`), as Istio's sidecar container runs: its listeners and
/// every socket it opens belong to the proxy uid. `dir`, where it writes its
/// control socket and logs, is handed to that uid first.
fn spawn_as_proxy(pod: &Pod, o: &SidecarOptions, dir: &Path, argv: &[&str]) -> Result<PodProcess> {
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(o.uid)),
        Some(nix::unistd::Gid::from_raw(o.gid)),
    )
    .with_context(|| format!("chown {} to the proxy uid", dir.display()))?;
    let (uid, gid) = (o.uid.to_string(), o.gid.to_string());
    let mut full = vec![
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
    ];
    full.extend_from_slice(argv);
    pod.spawn(&full)
}
