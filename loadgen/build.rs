//! Compiles the Polaris v1 client from ../proto with protox (pure Rust, no system
//! protoc), so the load generator does not depend on the server crate building.
//! The server trait is compiled too: the tests answer Discover with a fake server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let descriptors = protox::compile(["../proto/polaris_v1.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
