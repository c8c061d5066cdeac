//! Compiles etcd's client API from `proto/` with a vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The version `oxcd --version` and `oxcd_build_info` report: the package version, with
    // `+<OXCD_BUILD>` when a build label is given (the Dockerfile's OXCD_BUILD argument).
    println!("cargo:rerun-if-env-changed=OXCD_BUILD");
    let mut version = std::env::var("CARGO_PKG_VERSION")?;
    if let Some(label) = std::env::var("OXCD_BUILD")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        version = format!("{version}+{}", label.trim());
    }
    println!("cargo:rustc-env=OXCD_VERSION={version}");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/api/v3lockpb/v3lock.proto",
        "proto/etcd/api/v3electionpb/v3election.proto",
        "proto/raftpb/peer.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["proto"])?;
    // etcd's JSON gateway mapping (grpc-gateway's jsonpb with proto field names): serde
    // implementations for the client API's messages.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
