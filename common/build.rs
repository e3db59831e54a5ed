//! Generates the gRPC code for `proto/ferry/v1/ferry.proto` with a vendored protoc,
//! so that nothing has to be installed by hand.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("ferry/v1/ferry.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // A blob's bytes stay in the buffer they arrived in (no copy when a chunk
    // is decoded, or handed to several members).
    config.bytes([".ferry.v1.Chunk.data"]);
    tonic_prost_build::configure().compile_with_config(config, &[proto], &[proto_dir])?;
    Ok(())
}
