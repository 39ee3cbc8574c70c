//! Helm's own engine for the chart tests: tools/chart/render.py runs PyPI's
//! helm-python-sdk (Helm v4's Go library) from the private virtual
//! environment `make helm-sdk` installs, to render charts/meshlane like
//! `helm template`, lint it like `helm lint --strict` and validate values
//! files against its values.schema.json. Also: the rendered manifests as
//! YAML documents, and the agent config the chart's ConfigMap carries.
//! Needs no root and no `sim` feature.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// Where `make helm-sdk` installs helm-python-sdk (the Makefile reads this
/// line).
pub const HELM_VENV: &str = "/opt/meshlane/helm-venv";

/// The release name and namespace every render uses.
pub const RELEASE: &str = "meshlane";
pub const NAMESPACE: &str = "meshlane-system";

/// The Python with helm-python-sdk: `MESHLANE_HELM_PYTHON`, else the venv's.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHLANE_HELM_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(HELM_VENV).join("bin/python");
    p.exists().then_some(p)
}

/// Whether the chart cases can run. Without the SDK they are skipped with
/// a message, unless MESHLANE_REQUIRE_HELM=1 (set by `make test` and CI,
/// which install it) makes that a failure.
pub fn available(case: &str) -> bool {
    if python().is_some() {
        return true;
    }
    let why = format!("no helm-python-sdk at {HELM_VENV} (run `make helm-sdk`)");
    if std::env::var_os("MESHLANE_REQUIRE_HELM").is_some() {
        panic!("{case}: MESHLANE_REQUIRE_HELM is set but {why}");
    }
    eprintln!("{case}: skipped, {why}");
    false
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn chart_dir() -> PathBuf {
    repo_path("charts/meshlane")
}

/// Runs render.py; Ok(stdout) on exit 0, Err(stderr) otherwise.
fn render_py(action: &str, values: Option<&Path>) -> Result<String, String> {
    let py = python().expect("helm-python-sdk (call helm::available first)");
    let mut cmd = Command::new(py);
    cmd.arg(repo_path("tools/chart/render.py"))
        .arg(action)
        .arg(chart_dir());
    if let Some(v) = values {
        cmd.arg(v);
    }
    let out = cmd
        .args(["--name", RELEASE, "--namespace", NAMESPACE])
        .output()
        .expect("running tools/chart/render.py");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[derive(Deserialize)]
struct Rendered {
    manifests: BTreeMap<String, String>,
}

/// Every template's rendered text by template path (NOTES.txt included).
pub fn render(values: Option<&Path>) -> Result<BTreeMap<String, String>, String> {
    let out = render_py("render", values)?;
    let r: Rendered = serde_json::from_str(&out).map_err(|e| format!("render.py output: {e}"))?;
    Ok(r.manifests)
}

/// One lint finding: severity 0 unknown, 1 info, 2 warning, 3 error.
#[derive(Debug, Deserialize)]
pub struct LintMessage {
    pub severity: u8,
    pub path: String,
    pub error: String,
}

#[derive(Debug, Deserialize)]
pub struct LintReport {
    pub messages: Vec<LintMessage>,
    #[serde(default)]
    pub errors: Option<Vec<String>>,
}

/// `helm lint --strict` with an optional values file.
pub fn lint(values: Option<&Path>) -> LintReport {
    let out = render_py("lint", values).unwrap_or_else(|e| panic!("lint did not run: {e}"));
    serde_json::from_str(&out).expect("lint report is JSON")
}

/// The values file against values.schema.json: Err(Helm's message).
pub fn validate(values: &Path) -> Result<(), String> {
    render_py("validate", Some(values)).map(|_| ())
}

/// The Kubernetes documents of a render: (template path, document), empty
/// documents and NOTES.txt left out.
pub fn documents(manifests: &BTreeMap<String, String>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, text) in manifests {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: not YAML: {e}\n{text}"));
            if !v.is_null() {
                out.push((path.clone(), v));
            }
        }
    }
    out
}

/// The documents of one kind.
pub fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

/// The agent config file the chart's ConfigMap carries (`agent.yaml`).
pub fn agent_config(docs: &[(String, Value)]) -> String {
    let cms = of_kind(docs, "ConfigMap");
    assert_eq!(cms.len(), 1, "one ConfigMap expected");
    cms[0]["data"]["agent.yaml"]
        .as_str()
        .expect("the ConfigMap has agent.yaml")
        .to_string()
}
