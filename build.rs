//! Compiles every `bpf/*.bpf.c` with clang through libbpf-cargo and writes a
//! Rust skeleton for each into `OUT_DIR/<name>.skel.rs`
//! (chaos.bpf.c, the simulated node's, only with feature `sim`). Headers come from
//! the system's <linux/bpf.h> and the libbpf headers that libbpf-sys builds;
//! nothing is downloaded and no vmlinux.h is needed.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// Programs only the simulated node uses (tc fault injection).
const LAB_ONLY: [&str; 1] = ["chaos.bpf.c"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let libbpf_include =
        env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports its headers as DEP_BPF_INCLUDE");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    // Feature `sim` (the lab) adds its own programs; the node build has none of them.
    let lab = env::var_os("CARGO_FEATURE_SIM").is_some();
    println!("cargo:rerun-if-changed=bpf");
    let mut sources: Vec<PathBuf> = fs::read_dir("bpf")
        .expect("bpf/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .filter(|p| lab || !LAB_ONLY.iter().any(|l| p.ends_with(l)))
        .collect();
    sources.sort();
    for src in sources {
        let file = src.file_name().unwrap().to_string_lossy().into_owned();
        let name = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{name}.bpf.o")))
            .clang_args([
                format!("-I{libbpf_include}"),
                format!("-I{multiarch}"),
                "-Ibpf".to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
                "-mcpu=v3".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}
