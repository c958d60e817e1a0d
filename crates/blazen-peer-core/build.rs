//! Generates the gRPC service from `proto/` with protox, a pure-Rust protobuf
//! compiler, so building never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let proto_file = format!("{proto_dir}/blazen_peer.proto");
    println!("cargo:rerun-if-changed={proto_file}");
    let mut descriptors = protox::compile([&proto_file], [proto_dir])?;
    piece_messages(&mut descriptors);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payload fields as `Bytes`: decoding then slices tonic's receive
        // buffer instead of copying every message once more.
        .bytes(".")
        .extern_path(
            ".blazen.peer.v1.PostcardPiece",
            "crate::piece::PostcardPiece",
        )
        .compile_fds(descriptors)?;
    Ok(())
}

/// The value-carrying streams (`DerefSessionRefChunks` replies, `PutSessionRef`
/// requests) get a message of their own, `PostcardPiece`: on the wire it is
/// `PostcardResponse` / `PostcardRequest` exactly (one `bytes` field 1), but
/// in Rust it is our type (src/piece.rs), which encodes a piece's header and
/// a slice of the value without first copying them into one buffer.
fn piece_messages(descriptors: &mut prost_types::FileDescriptorSet) {
    const PIECE: &str = ".blazen.peer.v1.PostcardPiece";
    for file in &mut descriptors.file {
        if file.package() != "blazen.peer.v1" {
            continue;
        }
        let Some(request) = file
            .message_type
            .iter()
            .find(|message| message.name() == "PostcardRequest")
            .cloned()
        else {
            continue;
        };
        file.message_type.push(prost_types::DescriptorProto {
            name: Some("PostcardPiece".into()),
            ..request
        });
        for service in &mut file.service {
            for method in &mut service.method {
                match method.name() {
                    "DerefSessionRefChunks" => method.output_type = Some(PIECE.into()),
                    "PutSessionRef" => method.input_type = Some(PIECE.into()),
                    _ => {}
                }
            }
        }
    }
}
