//! Generates the gRPC types and service stubs from `proto/` with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Tensor payloads become `bytes::Bytes`: decoded without a copy, handed on as is.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
