//! Issue 13: `meshlane install-cni` against sample node configurations
//! (tests/fixtures/cni: bridge `.conf`, Calico-like and Cilium-like
//! `.conflist`): the binary and the entry go in once, last, every other
//! plugin and key untouched (a `.conf` becomes a `.conflist`); a second
//! run changes nothing; `--watch` re-inserts the entry after the primary
//! CNI rewrites its file and stops on SIGTERM; `--uninstall` removes
//! exactly the entry and the binary.
mod common;
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::cni::PLUGIN;
use support::BIN;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cni");

/// A node's CNI directories with one sample configuration, plus an
/// unrelated later file that must never change.
struct Dirs {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    sample: String,
}

const OTHER: &str = "99-other.conflist";
const OTHER_TEXT: &str =
    "{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"plugins\":[{\"type\":\"ptp\"}]}\n";

impl Dirs {
    fn new(sample: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, conf) = (tmp.path().join("bin"), tmp.path().join("net.d"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::copy(Path::new(FIXTURES).join(sample), conf.join(sample)).unwrap();
        std::fs::write(conf.join(OTHER), OTHER_TEXT).unwrap();
        Self {
            _tmp: tmp,
            bin,
            conf,
            sample: sample.into(),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "install-cni".into(),
            "--bin-dir".into(),
            self.bin.display().to_string(),
            "--conf-dir".into(),
            self.conf.display().to_string(),
            "--plugin-binary".into(),
            PLUGIN.into(),
        ]
    }

    fn run(&self, extra: &[&str]) -> Output {
        Command::new(BIN)
            .args(self.args())
            .args(extra)
            .output()
            .expect("running meshlane install-cni")
    }

    /// The file meshlane's entry belongs in.
    fn primary(&self) -> PathBuf {
        let p = self.conf.join(&self.sample);
        if self.sample.ends_with(".conf") {
            p.with_extension("conflist")
        } else {
            p
        }
    }

    fn original(&self) -> Value {
        read(&Path::new(FIXTURES).join(&self.sample))
    }

    fn assert_other_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.conf.join(OTHER)).unwrap(),
            OTHER_TEXT
        );
    }
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plugins of the original sample (a .conf as its one plugin).
fn original_plugins(orig: &Value) -> Vec<Value> {
    match orig.get("plugins") {
        Some(p) => p.as_array().unwrap().clone(),
        None => {
            let mut p = orig.clone();
            let o = p.as_object_mut().unwrap();
            o.remove("cniVersion");
            o.remove("name");
            vec![p]
        }
    }
}

/// The primary holds the original plugins in order, then one meshlane
/// entry.
fn assert_installed(d: &Dirs) {
    let doc = read(&d.primary());
    let orig = d.original();
    let plugins = doc["plugins"].as_array().expect("a conflist");
    let want = original_plugins(&orig);
    assert_eq!(
        &plugins[..plugins.len() - 1],
        &want[..],
        "{}: other plugins changed",
        d.sample
    );
    assert_eq!(
        plugins.last().unwrap()["type"],
        "meshlane-cni",
        "{}",
        d.sample
    );
    assert_eq!(
        plugins
            .iter()
            .filter(|p| p["type"] == "meshlane-cni")
            .count(),
        1
    );
    assert_eq!(doc["cniVersion"], orig["cniVersion"]);
    assert_eq!(doc["name"], orig["name"]);
    assert_eq!(
        std::fs::read(d.bin.join("meshlane-cni")).unwrap(),
        std::fs::read(PLUGIN).unwrap()
    );
    let mode = std::fs::metadata(d.bin.join("meshlane-cni"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    d.assert_other_untouched();
}

#[test]
fn inserted_once_last_and_removed_exactly() {
    for sample in ["10-bridge.conf", "10-calico.conflist", "05-cilium.conflist"] {
        let d = Dirs::new(sample);
        ok(&d.run(&[]), sample);
        assert_installed(&d);
        if sample.ends_with(".conf") {
            assert!(
                !d.conf.join(sample).exists(),
                "the .conf was left beside its .conflist"
            );
        } else {
            // Key order kept: the text differs from the sample only by the entry.
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&read(&d.primary())), keys(&d.original()));
        }
        // Again: nothing to change, nothing written.
        let before = std::fs::metadata(d.primary()).unwrap();
        let out = ok(&d.run(&[]), sample);
        assert!(out.contains("nothing to change"), "{sample}: {out}");
        let after = std::fs::metadata(d.primary()).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
        // No temp file left.
        for e in std::fs::read_dir(&d.conf).unwrap().flatten() {
            assert!(
                !e.file_name().to_string_lossy().contains("meshlane-tmp"),
                "{:?}",
                e.path()
            );
        }

        ok(&d.run(&["--uninstall"]), sample);
        let doc = read(&d.primary());
        assert_eq!(
            doc["plugins"].as_array().unwrap(),
            &original_plugins(&d.original()),
            "{sample}"
        );
        if !sample.ends_with(".conf") {
            assert_eq!(doc, d.original(), "{sample}: not restored exactly");
        }
        assert!(!d.bin.join("meshlane-cni").exists());
        d.assert_other_untouched();
        let out = ok(&d.run(&["--uninstall"]), sample);
        assert!(out.contains("nothing to change"), "{sample}: {out}");
    }
}

#[test]
fn watch_reinserts_after_the_primary_rewrites_its_file() {
    for sample in ["10-calico.conflist", "05-cilium.conflist", "10-bridge.conf"] {
        watch_one(sample);
    }
}

fn watch_one(sample: &str) {
    let d = Dirs::new(sample);
    let mut child = Command::new(BIN)
        .args(d.args())
        .arg("--watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "{sample}: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let has_entry = || {
        std::fs::read(d.primary())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| {
                v["plugins"]
                    .as_array()
                    .is_some_and(|p| p.last().is_some_and(|l| l["type"] == "meshlane-cni"))
            })
            && !d.conf.join(&d.sample).with_extension("conf").exists()
    };
    wait_for("first insert", &has_entry);
    assert_installed(&d);
    // The primary CNI rewrites its file (Calico and Cilium do when they
    // restart); a .conf comes back as a .conf.
    for round in 0..3 {
        std::fs::copy(Path::new(FIXTURES).join(&d.sample), d.conf.join(&d.sample)).unwrap();
        wait_for(&format!("re-insert {round}"), &has_entry);
        assert_installed(&d);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "install-cni --watch ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn no_primary_configuration_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["install-cni", "--bin-dir"])
        .arg(tmp.path().join("bin"))
        .arg("--conf-dir")
        .arg(tmp.path())
        .args(["--plugin-binary", PLUGIN])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no CNI network configuration")
            && err.contains(&tmp.path().display().to_string()),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
