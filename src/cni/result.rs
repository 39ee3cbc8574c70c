//! `prevResult`, the result of the plugins before meshlane-cni in the
//! chain: the pod's addresses are read from it, and it is passed on
//! unchanged (only `cniVersion` says the configuration's version, which
//! the runtime already converted it to).

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use super::error::{CniError, Code};

fn invalid(details: String) -> CniError {
    CniError::new(Code::InvalidConfig, "invalid prevResult", details)
}

/// The addresses prevResult gives the container's interfaces: every
/// `ips` entry whose `interface` index names an interface with `sandbox`
/// = `netns` (entries without an index count too: older results).
pub fn sandbox_ips(prev: &Value, netns: &Path) -> Result<Vec<IpAddr>, CniError> {
    let Some(obj) = prev.as_object() else {
        return Err(invalid(format!("prevResult is not an object: {prev}")));
    };
    let interfaces = obj
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let in_sandbox = |idx: u64| {
        interfaces
            .get(usize::try_from(idx).unwrap_or(usize::MAX))
            .and_then(|i| i.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty() && Path::new(s) == netns)
    };
    let mut out = Vec::new();
    for ip in obj
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(address) = ip.get("address").and_then(Value::as_str) else {
            return Err(invalid(format!("ips entry without an address: {ip}")));
        };
        let host = address.split('/').next().unwrap_or_default();
        let addr: IpAddr = host.parse().map_err(|_| {
            invalid(format!(
                "ips address {address:?} is not an IP in CIDR notation"
            ))
        })?;
        let on_pod = match ip.get("interface").and_then(Value::as_u64) {
            Some(idx) => in_sandbox(idx),
            None => true,
        };
        if on_pod && !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// What the plugin prints on ADD: prevResult as given, in `version`.
pub fn passthrough(prev: &Value, version: &str) -> Value {
    let mut out = prev.clone();
    if let Some(obj) = out.as_object_mut() {
        obj.insert("cniVersion".into(), Value::String(version.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_result() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}
            ],
            "ips": [
                {"version": "4", "interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"version": "6", "interface": 2, "address": "fd00::5/64"},
                {"version": "4", "interface": 0, "address": "10.1.0.1/24"}
            ],
            "dns": {}
        })
    }

    #[test]
    fn only_the_sandbox_interface_addresses_count() {
        let ips = sandbox_ips(&bridge_result(), Path::new("/run/netns/p")).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(sandbox_ips(&bridge_result(), Path::new("/run/netns/q"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn passthrough_changes_only_the_version() {
        let prev = bridge_result();
        let out = passthrough(&prev, "0.4.0");
        assert_eq!(out, prev);
        let out = passthrough(&prev, "1.0.0");
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["ips"], prev["ips"]);
        // key order is kept
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["cniVersion", "interfaces", "ips", "dns"]);
    }

    #[test]
    fn malformed_addresses_are_refused() {
        let e =
            sandbox_ips(&json!({"ips": [{"address": "nope/24"}]}), Path::new("/x")).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(sandbox_ips(&json!([1]), Path::new("/x")).is_err());
    }
}
