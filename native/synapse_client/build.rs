//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so
//! building never needs a system `protoc`; also writes `methods.rs`, the
//! path of every method of every service, for calls that name their method
//! (the lane, and gRPC calls made with serialized messages).

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "synapse/v1/agent.proto",
        "synapse/v1/probe.proto",
        "synapse/v1/lane.proto",
        "grpc/health/v1/health.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;

    let mut methods = String::new();
    for file in &descriptors.file {
        for service in &file.service {
            let service_name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                writeln!(
                    methods,
                    "/// `{service_name}/{method}`\npub const {constant}: &str = \"/{service_name}/{method}\";",
                    method = method.name(),
                    constant = screaming(&format!("{}{}", service.name(), method.name())),
                )?;
            }
        }
    }
    std::fs::write(
        PathBuf::from(std::env::var("OUT_DIR")?).join("methods.rs"),
        methods,
    )?;

    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}

/// `AgentServiceRunSync` -> `AGENT_SERVICE_RUN_SYNC`
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
