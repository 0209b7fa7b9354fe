//! Compiles `proto/csi.proto` and kubelet's `proto/pluginregistration.proto` with protox (pure Rust), so no `protoc` is needed to build.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    let fds = protox::compile(["csi.proto"], ["proto"])?;
    let registration = protox::compile(["pluginregistration.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Keep the encoded descriptor set too: the spec test reads field numbers from it.
    std::fs::write(
        out.join("csi_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(registration)?;
    Ok(())
}
