//! `cargo bench --bench xds_scale_mimalloc -- ...`: benches/xds_scale.rs
//! (same options, same output) with mimalloc as the global allocator of
//! both processes instead of glibc malloc, to compare resident memory
//! under the same xDS churn (docs/benchmarks.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "xds_scale.rs"]
mod xds_scale;

fn main() -> std::process::ExitCode {
    xds_scale::main()
}
