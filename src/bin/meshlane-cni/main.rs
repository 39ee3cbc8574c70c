//! `meshlane-cni`: the chained CNI plugin (docs/cni.md). Synchronous, no
//! async runtime: reads the `CNI_*` environment and the configuration on
//! stdin, asks the meshlane agent over its unix socket, and prints
//! prevResult unchanged (ADD) or nothing (DEL, CHECK, GC, STATUS), or a
//! CNI error object on stdout with a non-zero exit. The per-command logic
//! is in [`commands`]; the shared parsing in `meshlane::cni`.

mod commands;

use std::io::Read;
use std::process::ExitCode;

use meshlane::cni::{conf, version, CniError, Code};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => commands::run(&|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(CniError::new(
            Code::Io,
            "reading the network configuration from stdin",
            e.to_string(),
        )),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let v = conf::version_of(&stdin).unwrap_or_else(|| version::LATEST.to_string());
            println!("{}", e.to_json(&v));
            eprintln!("meshlane-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
