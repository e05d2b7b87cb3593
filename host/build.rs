//! Generates the KServe v2 gRPC service (`inference.GRPCInferenceService`)
//! from the vendored proto, with a protoc binary from crates.io
//! (protoc-bin-vendored), so building needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Precompiled artifacts are keyed by the target the host runs on.
    println!(
        "cargo::rustc-env=OUTPOST_TARGET={}",
        std::env::var("TARGET")?
    );
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo::rerun-if-changed={proto}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}
