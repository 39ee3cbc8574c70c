//! `meshlane install-cni`: the plugin binary and its conflist entry on a
//! node (the file work is `meshlane::cni::install`). `--watch` keeps the
//! entry in place when the primary CNI rewrites its file (it looks every
//! half second; each look writes only what differs) until SIGTERM or
//! SIGINT; `--uninstall` removes exactly the entry and the binary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};

use meshlane::cni::conf::DEFAULT_AGENT_NAMESPACE;
use meshlane::cni::install::{Changes, InstallError, Installer};
use meshlane::layout::DEFAULT_PIN_ROOT;

/// How often `--watch` looks at the configuration directory.
const WATCH_EVERY: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct InstallCniArgs {
    /// Directory of the node's CNI plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Directory of the node's CNI network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Keep watching and re-insert the entry when the primary CNI rewrites
    /// its configuration (runs until SIGTERM).
    #[arg(long, conflicts_with = "uninstall")]
    watch: bool,
    /// Remove meshlane's entry and binary instead.
    #[arg(long)]
    uninstall: bool,
    /// The meshlane-cni binary to install [default: beside this binary].
    #[arg(long)]
    plugin_binary: Option<PathBuf>,
    /// The agent's namespace, never blocked [default: meshlane-system].
    #[arg(long, env = "POD_NAMESPACE")]
    agent_namespace: Option<String>,
    /// Namespaces never blocked nor meshed, comma-separated [default:
    /// kube-system and the agent's namespace].
    #[arg(long, value_delimiter = ',')]
    exclude_namespaces: Option<Vec<String>>,
    /// Seconds the plugin waits for the agent [default: 20].
    #[arg(long)]
    agent_timeout_seconds: Option<f64>,
}

impl InstallCniArgs {
    /// meshlane's conflist entry.
    fn entry(&self, pin_root: &std::path::Path) -> Value {
        let mut e = json!({ "type": meshlane::cni::PLUGIN_TYPE });
        if pin_root != std::path::Path::new(DEFAULT_PIN_ROOT) {
            e["pinRoot"] = json!(pin_root);
        }
        e["agentNamespace"] = json!(self
            .agent_namespace
            .as_deref()
            .unwrap_or(DEFAULT_AGENT_NAMESPACE));
        if let Some(ns) = &self.exclude_namespaces {
            e["excludeNamespaces"] = json!(ns);
        }
        if let Some(t) = self.agent_timeout_seconds {
            e["agentTimeoutSeconds"] = json!(t);
        }
        e
    }

    fn installer(&self, pin_root: &std::path::Path) -> Result<Installer> {
        let plugin_binary = match &self.plugin_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name(meshlane::cni::PLUGIN_TYPE),
        };
        Ok(Installer {
            bin_dir: self.bin_dir.clone(),
            conf_dir: self.conf_dir.clone(),
            plugin_binary,
            entry: self.entry(pin_root),
        })
    }
}

fn report(changes: &Changes, json_out: bool) -> Result<()> {
    if json_out {
        return crate::print_json(&json!({
            "written": changes.written,
            "removed": changes.removed,
        }));
    }
    for p in &changes.written {
        println!("wrote {}", p.display());
    }
    for p in &changes.removed {
        println!("removed {}", p.display());
    }
    if changes.is_empty() {
        println!("nothing to change");
    }
    Ok(())
}

pub fn run(args: &InstallCniArgs, pin_root: &std::path::Path, json_out: bool) -> Result<()> {
    let installer = args.installer(pin_root)?;
    if args.uninstall {
        return report(&installer.uninstall()?, json_out);
    }
    if !args.watch {
        return report(&installer.install()?, json_out);
    }
    watch(&installer)
}

/// Installs, then keeps the entry in place until SIGTERM/SIGINT.
fn watch(installer: &Installer) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("watching SIGTERM/SIGINT")?;
    }
    tracing::info!(conf_dir = %installer.conf_dir.display(), "install-cni: watching");
    let mut waiting_logged = false;
    while !stop.load(Ordering::SeqCst) {
        match installer.install() {
            Ok(changes) => {
                waiting_logged = false;
                for p in &changes.written {
                    tracing::info!(file = %p.display(), "install-cni: wrote");
                }
                for p in &changes.removed {
                    tracing::info!(file = %p.display(), "install-cni: removed");
                }
            }
            Err(InstallError::NoPrimary(dir)) => {
                if !waiting_logged {
                    tracing::info!(dir = %dir.display(), "install-cni: waiting for the primary CNI's configuration");
                    waiting_logged = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "install-cni"),
        }
        std::thread::sleep(WATCH_EVERY);
    }
    tracing::info!("install-cni: stopping (the entry stays installed)");
    Ok(())
}
