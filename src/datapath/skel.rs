//! Generated BPF skeletons (one per `bpf/*.bpf.c`).
#![allow(clippy::all, non_camel_case_types, non_snake_case, dead_code, unused)]

pub mod splice {
    include!(concat!(env!("OUT_DIR"), "/splice.skel.rs"));
}

pub mod intercept {
    include!(concat!(env!("OUT_DIR"), "/intercept.skel.rs"));
}

pub mod inbound {
    include!(concat!(env!("OUT_DIR"), "/inbound.skel.rs"));
}

/// The simulated node's fault injection (feature `sim`).
#[cfg(feature = "sim")]
pub mod chaos {
    include!(concat!(env!("OUT_DIR"), "/chaos.skel.rs"));
}
