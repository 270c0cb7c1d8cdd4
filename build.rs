//! Generates the gRPC code from `proto/` with protox (a Rust protobuf
//! compiler), so no system `protoc` is needed, and writes the encoded file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // What the agencies' listener serves, and so advertises by reflection;
    // the admin plane (admin.proto) is served on its own listener only.
    let mut served = protox::Compiler::new(["proto"])?;
    served.include_imports(true).include_source_info(true);
    served.open_files([
        "fugo/v1/codes.proto",
        "fugo/v1/audit.proto",
        "fugo/v1/persons.proto",
    ])?;
    std::fs::write(
        out_dir.join("fugo_descriptor.bin"),
        served.encode_file_descriptor_set(),
    )?;
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([
        "fugo/v1/codes.proto",
        "fugo/v1/audit.proto",
        "fugo/v1/persons.proto",
        "fugo/v1/admin.proto",
    ])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable requests are INVALID_ARGUMENT (src/service/codec.rs).
        .codec_path("crate::service::codec::StrictCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
