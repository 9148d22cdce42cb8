//! Compiles `proto/synapse/v1/lane.proto` with protox (no system `protoc`):
//! the frames this module reads and writes are those of the wire contract.
//! Also lets the module's CPython symbols stay undefined until Python loads
//! it, which macOS's linker refuses unless told.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = "synapse/v1/lane.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let descriptors = protox::compile([file], [&root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    pyo3_build_config::add_extension_module_link_args();
    Ok(())
}
