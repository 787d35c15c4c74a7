//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building
//! Signalbox never needs a system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "signalbox/auth/v1/auth.proto",
    "signalbox/catalog/v1/catalog.proto",
    "signalbox/orders/v1/orders.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root])?;
    // The descriptor set also feeds gRPC server reflection.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("signalbox_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A server that does not implement a method answers UNIMPLEMENTED:
        // adding a method to a service does not break every fake of it in
        // the tests, only the fakes that need it implement it.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
