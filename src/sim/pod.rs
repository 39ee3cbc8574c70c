//! One simulated pod: a named netns wired by CNI, and its processes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use super::cni::{self, Subnet};
use super::cni_runtime::{Attachment, Network};

/// How a pod's network was made, so drop can undo it.
enum Wiring {
    /// The bridge plugin alone, with this configuration.
    Bridge(String),
    /// A configuration list run like a runtime does; DEL gets the cached
    /// result.
    Chain {
        network: Box<Network>,
        attachment: Attachment,
        result: serde_json::Value,
    },
}

/// A process started inside a pod; killed on drop.
pub struct PodProcess {
    pub child: Child,
    pub what: String,
}

impl PodProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Pod {
    pub name: String,
    pub netns: PathBuf,
    pub ip4: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    wiring: Wiring,
    /// The subnet's claim marker and IPAM directory: a pod dropped after its
    /// subnet was released removes what its CNI DEL recreates there.
    subnet_claim: PathBuf,
    ipam_dir: PathBuf,
}

/// Runs a command to completion; fails with its stderr. (stdin closed)
pub(super) fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Pod {
    /// Creates netns `name`, brings lo up and wires eth0 with CNI.
    pub fn create(name: &str, subnet: &Subnet, ipv6: bool) -> Result<Self> {
        let conf = subnet.conf(ipv6);
        let mut pod = Self::netns_only(name, subnet, ipv6, Wiring::Bridge(conf.clone()))?;
        let res = cni::invoke("ADD", &conf, &pod.netns, name)?;
        pod.take_addresses(&res)?;
        if ipv6 {
            // The bridge's own address must not wait for DAD either.
            let _ = sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.accept_dad=0", subnet.bridge()),
            ]);
        }
        Ok(pod)
    }

    /// Creates netns `name` and wires it by running `network` (a
    /// configuration list, e.g. bridge then meshlane-cni) as a runtime
    /// does, container id = `name`, interface eth0, CNI_ARGS `args`. Drop
    /// runs DEL with the cached result.
    pub fn create_chained(
        name: &str,
        subnet: &Subnet,
        network: &Network,
        args: &str,
    ) -> Result<Self> {
        let attachment = Attachment {
            container_id: name.to_string(),
            netns: PathBuf::from(format!("/run/netns/{name}")),
            ifname: "eth0".into(),
            args: args.to_string(),
        };
        let wiring = Wiring::Chain {
            network: Box::new(network.clone()),
            attachment: attachment.clone(),
            result: serde_json::Value::Null,
        };
        let mut pod = Self::netns_only(name, subnet, false, wiring)?;
        let res = network.add(&attachment)?;
        pod.take_addresses(&res)?;
        if let Wiring::Chain { result, .. } = &mut pod.wiring {
            *result = res;
        }
        Ok(pod)
    }

    /// The chain's cached ADD result (None for a bridge-only pod).
    pub fn cni_result(&self) -> Option<&serde_json::Value> {
        match &self.wiring {
            Wiring::Chain { result, .. } => Some(result),
            Wiring::Bridge(_) => None,
        }
    }

    /// The attachment a chained pod was added with.
    pub fn attachment(&self) -> Option<&Attachment> {
        match &self.wiring {
            Wiring::Chain { attachment, .. } => Some(attachment),
            Wiring::Bridge(_) => None,
        }
    }

    fn netns_only(name: &str, subnet: &Subnet, ipv6: bool, wiring: Wiring) -> Result<Self> {
        sh(&["ip", "netns", "add", name])?;
        let netns = PathBuf::from(format!("/run/netns/{name}"));
        let pod = Pod {
            name: name.into(),
            netns,
            ip4: Ipv4Addr::UNSPECIFIED,
            ip6: None,
            wiring,
            subnet_claim: subnet.claim_path().to_path_buf(),
            ipam_dir: subnet.ipam_dir(),
        };
        sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        if ipv6 {
            // No duplicate address detection: addresses usable at once.
            for k in ["all", "default"] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{k}.accept_dad=0"),
                ])?;
            }
        }
        Ok(pod)
    }

    /// The pod's addresses from a CNI result.
    fn take_addresses(&mut self, res: &serde_json::Value) -> Result<()> {
        for ip in res["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().unwrap_or_default();
            let host = addr.split('/').next().unwrap_or_default();
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => self.ip4 = v4,
                Ok(IpAddr::V6(v6)) => self.ip6 = Some(v6),
                Err(_) => {}
            }
        }
        if self.ip4.is_unspecified() {
            bail!("CNI gave pod {} no IPv4 address: {res}", self.name);
        }
        Ok(())
    }

    /// Runs `f` on a thread inside this pod's netns (sockets it makes live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        Ok(crate::netns::in_netns(&self.netns, f)?)
    }

    /// Starts a long-running thread inside the pod's netns.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let ns = crate::netns::open_netns(&self.netns)?;
        Ok(std::thread::spawn(move || {
            use std::os::fd::AsFd;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering a netns we just opened");
            f()
        }))
    }

    /// A command that runs inside the pod (`ip netns exec`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Starts `argv` in the pod; quiet unless MESHLANE_TEST_VERBOSE is set.
    pub fn spawn(&self, argv: &[&str]) -> Result<PodProcess> {
        let mut c = self.command(argv);
        if std::env::var_os("MESHLANE_TEST_VERBOSE").is_none() {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {} in pod {}", argv.join(" "), self.name))?;
        Ok(PodProcess {
            child,
            what: argv.join(" "),
        })
    }

    /// Runs a command in the pod to completion; fails with its stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let out = self.command(argv).output()?;
        if !out.status.success() {
            bail!(
                "{} in pod {}: {}",
                argv.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        match &self.wiring {
            Wiring::Bridge(conf) => {
                let _ = cni::invoke("DEL", conf, &self.netns, &self.name);
            }
            Wiring::Chain {
                network,
                attachment,
                result,
            } => {
                if let Err(e) = network.del(attachment, Some(result)) {
                    eprintln!("sim: CNI DEL of pod {}: {e:#}", self.name);
                }
            }
        }
        if !self.subnet_claim.exists() {
            let _ = std::fs::remove_dir_all(&self.ipam_dir);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
