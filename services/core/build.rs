//! Compiles `proto/alphadome/v1/*.proto` with protox (pure Rust), so no
//! system `protoc` is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("alphadome/v1/events.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    // sqlx::migrate! embeds the migrations: a new or edited one must
    // rebuild this crate.
    println!("cargo:rerun-if-changed=../../migrations");
    let fds = protox::compile([&file], [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
