//! `meshlane explain --config-dump`: golden decisions for every Istio
//! config dump in the fixtures (UPDATE_GOLDEN=1 rewrites them), the
//! decisions the real configs force, and bad input (one error line,
//! non-zero exit, no panic). No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio/configdumps")
}

fn explain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshlane"))
        .arg("explain")
        .args(args)
        .output()
        .expect("run meshlane")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_fixture_dump_matches_its_golden_decisions() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/explain");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dumps.sort();
    assert!(dumps.len() >= 7, "fixture dumps missing");
    let mut mismatched = Vec::new();
    for dump in dumps {
        let name = dump.file_stem().unwrap().to_string_lossy().into_owned();
        let path = dump.to_string_lossy().into_owned();
        let mut args = vec!["--config-dump", path.as_str(), "--json"];
        if name.starts_with("partial_") {
            args.push("--allow-partial");
        }
        let o = explain(&args);
        // Failures are golden too (v2-era dumps must be refused).
        let (file, text) = if o.status.success() {
            (
                format!("{name}.json"),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        } else {
            let line = stderr(&o).replace(&*fixtures().to_string_lossy(), "FIXTURES");
            (format!("{name}.err"), line)
        };
        let golden = golden_dir.join(&file);
        if update {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("no golden {file}; run with UPDATE_GOLDEN=1"));
        if want != text {
            mismatched.push(file);
        }
    }
    assert!(
        mismatched.is_empty(),
        "decisions differ from the goldens: {mismatched:?} (UPDATE_GOLDEN=1 rewrites)"
    );
}

#[test]
fn v2_era_dumps_are_refused_with_one_line() {
    for f in std::fs::read_dir(fixtures()).unwrap() {
        let p = f.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("legacy-v2res")
        {
            continue;
        }
        let o = explain(&["--config-dump", p.to_str().unwrap()]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("v2-era config dump"), "{e}");
    }
}

#[test]
fn bad_input_is_one_error_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let real =
        std::fs::read_to_string(fixtures().join("istio-1.10.0_sidecar_bookinfo-details-v1.json"))
            .unwrap();
    let cases: &[(&str, String, &str)] = &[
        ("truncated", real[..real.len() / 2].to_string(), "not JSON"),
        ("unknown-type", r#"{"configs":[{"@type":"type.googleapis.com/acme.Thing"}]}"#.into(), "unknown @type type.googleapis.com/acme.Thing"),
        ("empty-object", "{}".into(), "empty"),
        ("empty-configs", r#"{"configs":[]}"#.into(), "empty"),
        ("not-a-dump", "[1,2]".into(), "not an Envoy config dump"),
        ("no-clusters", r#"{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ListenersConfigDump"}]}"#.into(), "no clusters"),
        ("v2-resource", r#"{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ClustersConfigDump","static_clusters":[{"cluster":{"@type":"type.googleapis.com/envoy.api.v2.Cluster","name":"x"}}]}]}"#.into(), "v2-era"),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, text).unwrap();
        let o = explain(&["--config-dump", p.to_str().unwrap()]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{name}: exit 0");
        assert_eq!(e.lines().count(), 1, "{name}: {e}");
        assert!(
            e.starts_with("meshlane: ") && e.contains(want),
            "{name}: {e}"
        );
        assert!(!e.contains("panicked"), "{name}: {e}");
    }
    let o = explain(&["--config-dump", "/nonexistent/dump.json"]);
    assert!(!o.status.success() && stderr(&o).lines().count() == 1);
}

#[test]
fn summary_counts_destinations_and_the_bypassable_share() {
    let p = fixtures().join("istio-1.10.0_sidecar_bookinfo-details-v1.json");
    let o = explain(&["--config-dump", p.to_str().unwrap(), "--summary", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let total = s["total"].as_u64().unwrap();
    assert!(total > 10, "{s}");
    assert_eq!(
        s["bypass"].as_u64().unwrap() + s["sidecar"].as_u64().unwrap(),
        total
    );
    // No EDS in this dump and every cluster has a tlsMode: istio match.
    assert!(
        s["sidecar_reasons"]["endpoints_unknown_assume_mtls"]
            .as_u64()
            .unwrap()
            > 0,
        "{s}"
    );
    let text = explain(&["--config-dump", p.to_str().unwrap(), "--summary"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("can be bypassed"));
}

fn decisions(name: &str, partial: bool) -> serde_json::Value {
    let p = fixtures().join(name);
    let mut args = vec!["--config-dump", p.to_str().unwrap(), "--json"];
    if partial {
        args.push("--allow-partial");
    }
    let o = explain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn find<'a>(d: &'a serde_json::Value, kind: &str, port: u64) -> &'a serde_json::Value {
    d["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["destination"]["kind"] == kind && x["destination"]["port"] == port)
        .unwrap_or_else(|| panic!("no {kind} {port}"))
}

fn reason_codes(x: &serde_json::Value) -> Vec<String> {
    x["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rbac_and_ext_authz_listeners_keep_the_sidecar() {
    let d = decisions(
        "partial_listeners-only_istioctl-authz-testdata_sidecar_rbac-extauthz.json",
        true,
    );
    let x = find(&d, "inbound", 80);
    assert_eq!(x["decision"], "SIDECAR");
    let text = x["reasons"].to_string();
    assert!(text.contains("RBAC") && text.contains("ExtAuthz"), "{text}");
    assert!(reason_codes(x).contains(&"http_filter_not_allowed".to_string()));
}

#[test]
fn mtls_clusters_without_endpoints_keep_the_sidecar_in_the_real_dump() {
    let d = decisions("istio-1.10.0_sidecar_bookinfo-details-v1.json", false);
    for x in d["destinations"].as_array().unwrap() {
        assert_eq!(x["decision"], "SIDECAR", "{x}");
    }
    let reviews = d["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["destination"]["address"] == "10.96.36.43")
        .unwrap();
    assert!(reason_codes(reviews).contains(&"endpoints_unknown_assume_mtls".to_string()));
}

/// Inbound ports in the table and in --json: the 1.10 sidecar's 9080 is
/// PERMISSIVE (an mTLS chain beside the plaintext one), so SIDECAR even
/// with `inboundPassthrough` on, and says why.
#[test]
fn inbound_ports_show_their_decision_and_why() {
    let dump = fixtures().join("istio-1.10.0_sidecar_bookinfo-details-v1.json");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "bypass:\n  policies:\n    inboundPassthrough: true\n",
    )
    .unwrap();
    let args = [
        "--config-dump",
        dump.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let o = explain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("inbound:9080 "))
        .unwrap_or_else(|| panic!("no inbound:9080 line in {table}"));
    assert!(
        line.contains("SIDECAR") && line.contains("inbound|9080||"),
        "{line}"
    );
    assert!(table.contains("inbound_mtls_permissive: "), "{table}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let o = explain(&json_args);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let x = find(&d, "inbound", 9080);
    assert_eq!(x["decision"], "SIDECAR");
    assert!(reason_codes(x).contains(&"inbound_mtls_permissive".to_string()));
    assert!(!reason_codes(x).contains(&"inbound_passthrough_policy".to_string()));
}
