//! kube-proxy's iptables mode for the simulated node's Services, so pods
//! that are not meshed reach a ClusterIP as on a real node: per service a
//! `KUBE-SVC-*` chain picking one endpoint uniformly (`statistic --mode
//! random` with probabilities 1/n, 1/(n-1), ..., 1) and a `KUBE-SEP-*`
//! chain per endpoint with its DNAT. The rules are written into a pod's
//! own netns (`nat OUTPUT`), never the machine's: the simulated node's
//! bridge lives in the root netns, and nothing is added there.

use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::xds::Service;
use super::Pod;

/// The `iptables-restore --noflush` input for `services` (IPv4 ClusterIPs
/// and IPv4 endpoints only; others are skipped).
pub fn rules(services: &[Service]) -> String {
    let mut chains = vec![":KUBE-SERVICES - [0:0]".to_string()];
    let mut body = vec![
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_string(),
    ];
    for (i, s) in services.iter().enumerate() {
        let IpAddr::V4(vip) = s.vip else { continue };
        let eps: Vec<_> = s.endpoints.iter().filter(|e| e.is_ipv4()).collect();
        if eps.is_empty() {
            continue;
        }
        let svc = format!("KUBE-SVC-{i:04}");
        chains.push(format!(":{svc} - [0:0]"));
        body.push(format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{}:{}\" -m tcp --dport {} -j {svc}",
            s.host, s.port, s.port
        ));
        for (j, ep) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:04}-{j:03}");
            chains.push(format!(":{sep} - [0:0]"));
            let left = eps.len() - j;
            if left > 1 {
                body.push(format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                ));
            } else {
                body.push(format!("-A {svc} -j {sep}"));
            }
            body.push(format!(
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}"
            ));
        }
    }
    format!("*nat\n{}\n{}\nCOMMIT\n", chains.join("\n"), body.join("\n"))
}

/// Writes `services`' rules into `pod`'s netns, with an on-link route
/// per ClusterIP (the sim's pods have no default route, and a connect
/// needs a route before OUTPUT's DNAT runs).
pub fn install(pod: &Pod, services: &[Service]) -> Result<()> {
    for s in services {
        if let IpAddr::V4(vip) = s.vip {
            pod.exec(&[
                "ip",
                "route",
                "replace",
                &format!("{vip}/32"),
                "dev",
                "eth0",
            ])
            .with_context(|| format!("route to ClusterIP {vip} in pod {}", pod.name))?;
        }
    }
    let mut child = pod
        .command(&["iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting iptables-restore in pod {}", pod.name))?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules(services).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kube-proxy rules in pod {}: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::xds::Protocol;

    #[test]
    fn each_endpoint_gets_its_uniform_share_and_a_dnat() {
        let s = Service {
            host: "db.default.svc.cluster.local".into(),
            vip: "10.96.0.10".parse().unwrap(),
            port: 5432,
            protocol: Protocol::Tcp,
            endpoints: vec![
                "10.201.1.2:5432".parse().unwrap(),
                "10.201.1.3:5432".parse().unwrap(),
                "10.201.1.4:5432".parse().unwrap(),
                "[fd00::1]:5432".parse().unwrap(),
            ],
        };
        let r = rules(&[s]);
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"), "{r}");
        assert!(
            r.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp"),
            "{r}"
        );
        assert!(
            r.contains("--probability 0.33333333333 -j KUBE-SEP-0000-000"),
            "{r}"
        );
        assert!(
            r.contains("--probability 0.50000000000 -j KUBE-SEP-0000-001"),
            "{r}"
        );
        assert!(r.contains("-A KUBE-SVC-0000 -j KUBE-SEP-0000-002"), "{r}");
        assert!(
            r.contains("-j DNAT --to-destination 10.201.1.4:5432"),
            "{r}"
        );
        assert!(!r.contains("fd00"), "{r}");
    }
}
