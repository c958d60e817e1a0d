//! Generates the gRPC service from `proto/` with protox, a pure-Rust protobuf
//! compiler, so building never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let proto_file = format!("{proto_dir}/blazen_peer.proto");
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([&proto_file], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payload fields as `Bytes`: decoding then slices tonic's receive
        // buffer instead of copying every message once more.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
