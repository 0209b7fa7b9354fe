//! What clients outside Go send on the CSI socket. gRPC C-core (Python, C++, Ruby) and
//! grpc-java send the percent-encoded socket path as `:authority` on a Unix socket; the HTTP/2
//! layer under tonic refuses that authority (the stream is reset with PROTOCOL_ERROR), and
//! README's troubleshooting section documents the client-side workaround,
//! `grpc.default_authority=localhost`. A raw HTTP/2 client sends both requests to the real
//! server, so the test fails if either the refusal or the workaround stops being true.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_csi::node::{ConnectorConfig, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const DRIVER_NAME: &str = "interop.csi.example.com";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;

/// `rds-csi serve --node` (Identity and Node) on a socket in `dir`, as the binary runs it.
async fn start_server(dir: &Path) -> PathBuf {
    start_server_with(dir, None).await
}

/// Like [`start_server`], registering with kubelet through `registration` too.
async fn start_server_with(
    dir: &Path,
    registration: Option<rds_csi::registration::Config>,
) -> PathBuf {
    let socket = dir.join("csi.sock");
    let config = rds_csi::server::Config {
        socket: socket.clone(),
        driver_name: DRIVER_NAME.into(),
        controller: None,
        node: Some(rds_csi::node::Config {
            service: NodeConfig::new("interop-node", dir.join("state")),
            connector: ConnectorConfig::Loop {
                root: dir.join("data"),
            },
        }),
        kubelet_registration: registration,
        metrics: rds_csi::metrics::Config { listen: None },
    };
    tokio::spawn(async move { rds_csi::server::serve(config).await.unwrap() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never listened on {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    socket
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1), first byte's high bits zero.
fn hpack_int(out: &mut Vec<u8>, value: usize, prefix: u32) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Headers as HPACK literals without indexing, names and values not Huffman-coded.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_int(&mut out, name.len(), 7);
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, value.len(), 7);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// How the server ended stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The response ended normally; the bytes of its DATA frames.
    Answered(Vec<u8>),
    Reset(u32),
    GoAway(u32),
}

/// GetPluginInfo over a fresh connection with `:authority` set to `authority`.
async fn get_plugin_info(socket: &Path, authority: &str) -> Outcome {
    call(socket, "/csi.v1.Identity/GetPluginInfo", authority).await
}

/// A unary call of `path` with an empty request message.
async fn call(socket: &Path, path: &str, authority: &str) -> Outcome {
    let mut conn = UnixStream::connect(socket).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    out.extend(frame(HEADERS, END_HEADERS, 1, &headers));
    // One gRPC message: uncompressed, zero bytes (an empty request).
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    conn.write_all(&out).await.unwrap();

    let exchange = async {
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; 9];
            conn.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await.unwrap();
            let code_at = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    conn.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                RST_STREAM if stream == 1 => return Outcome::Reset(code_at(0)),
                GOAWAY => return Outcome::GoAway(code_at(4)),
                DATA if stream == 1 => {
                    body.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return Outcome::Answered(body);
                    }
                }
                HEADERS if stream == 1 && flags & END_STREAM != 0 => {
                    return Outcome::Answered(body)
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server ends the stream")
}

/// `/` and other reserved characters percent-encoded, as gRPC C-core does for the authority it
/// derives from a `unix://` target.
fn percent_encoded(path: &Path) -> String {
    percent_encoded_keeping(path, b"")
}

/// The path percent-encoded but for unreserved characters and `keep`.
fn percent_encoded_keeping(path: &Path, keep: &[u8]) -> String {
    path.display()
        .to_string()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_percent_encoded_socket_path_as_authority_is_refused_and_localhost_works() {
    let dir = tempfile::tempdir().unwrap();
    let socket = start_server(dir.path()).await;

    let encoded = percent_encoded(&socket);
    assert!(encoded.contains("%2F"), "{encoded}");
    match get_plugin_info(&socket, &encoded).await {
        Outcome::Reset(code) | Outcome::GoAway(code) => assert_eq!(code, PROTOCOL_ERROR),
        answered => panic!(
            "the server now accepts `{encoded}` ({answered:?}): update README's troubleshooting \
             section, the workaround is no longer needed"
        ),
    }

    // The workaround: what Go clients send, and what `grpc.default_authority=localhost` sets.
    match get_plugin_info(&socket, "localhost").await {
        Outcome::Answered(body) => {
            let name = DRIVER_NAME.as_bytes();
            assert!(
                body.windows(name.len()).any(|w| w == name),
                "GetPluginInfo names the driver: {body:?}"
            );
        }
        other => panic!("localhost as authority: {other:?}"),
    }

    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let troubleshooting = readme
        .split("\n## ")
        .find(|s| s.starts_with("Troubleshooting"))
        .expect("README has a `## Troubleshooting` section");
    for needle in ["PROTOCOL_ERROR", "grpc.default_authority", "localhost"] {
        assert!(
            troubleshooting.contains(needle),
            "README troubleshooting: {needle}"
        );
    }
}

/// The authority gRPC-Go (kubelet) derives from a socket path: RFC 3986 authority characters
/// kept, `@` among them (sub-delimiters and `:[]@`), the rest percent-encoded.
fn grpc_go_authority(path: &Path) -> String {
    percent_encoded_keeping(path, b"!$&'()*+,;=:[]@")
}

/// kubelet dials the registration socket without setting an authority (its CSI connection
/// sets `localhost`): the socket's name must make the encoded path one h2 takes.
#[tokio::test]
async fn kubelet_reaches_the_registration_socket_by_its_own_authority() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("plugins_registry");
    let registration = rds_csi::registration::Config::new(
        &registry,
        DRIVER_NAME,
        PathBuf::from("/var/lib/kubelet/plugins/interop/csi.sock"),
    );
    let reg_socket = registration.socket.clone();
    start_server_with(dir.path(), Some(registration)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&reg_socket).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no registration socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let get_info = "/pluginregistration.Registration/GetInfo";
    match call(&reg_socket, get_info, &grpc_go_authority(&reg_socket)).await {
        Outcome::Answered(body) => {
            let name = DRIVER_NAME.as_bytes();
            assert!(
                body.windows(name.len()).any(|w| w == name),
                "GetInfo names the driver: {body:?}"
            );
        }
        other => panic!(
            "kubelet's authority for {}: {other:?}",
            reg_socket.display()
        ),
    }
    // node-driver-registrar's name for the socket would not do.
    let registrar_name = registry.join(format!("{DRIVER_NAME}-reg.sock"));
    assert_eq!(
        call(&reg_socket, get_info, &grpc_go_authority(&registrar_name)).await,
        Outcome::Reset(PROTOCOL_ERROR)
    );
}
