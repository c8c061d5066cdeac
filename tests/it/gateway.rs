//! The JSON gateway with `curl`, side by side with the real etcd: the same requests, the same
//! HTTP statuses and the same JSON, field by field (IDs and terms that differ between two clusters
//! blanked).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use crate::harness::*;
use crate::ops::{curl, Http};

/// POSTs `body` to `path` with an optional `Authorization` token.
fn post(endpoint: &str, path: &str, body: &str, token: Option<&str>) -> Http {
    let auth = token.map(|t| format!("Authorization: {t}"));
    let mut args = vec!["-X", "POST", "-d", body];
    if let Some(a) = &auth {
        args.push("-H");
        args.push(a);
    }
    curl(&format!("http://{endpoint}{path}"), &args)
}

/// Blanks what differs between two clusters: IDs, terms, tokens, watch IDs.
fn blank(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if ["cluster_id", "member_id", "raft_term", "token", "watch_id"]
                    .contains(&k.as_str())
                {
                    *x = Value::String("N".to_string());
                } else {
                    blank(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(blank),
        _ => {}
    }
}

fn json(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    blank(&mut v);
    v
}

/// Sends the same request to both servers and asserts the same status and JSON.
fn same(
    etcd: &str,
    oxcd: &str,
    path: &str,
    body: &str,
    token: (Option<&str>, Option<&str>),
) -> Http {
    let e = post(etcd, path, body, token.0);
    let o = post(oxcd, path, body, token.1);
    assert_eq!(
        (e.status, json(&e.body)),
        (o.status, json(&o.body)),
        "POST {path} {body}: etcd (left) and oxcd (right) differ"
    );
    assert_eq!(e.content_type, o.content_type, "content type of {path}");
    assert_ne!(o.status, 0, "no answer to POST {path}");
    o
}

/// A streaming `curl -N` whose output lines are read as they arrive; killed on drop.
struct CurlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CurlStream {
    fn post(endpoint: &str, path: &str, body: &str) -> CurlStream {
        let mut child = Command::new("curl")
            .args(["-sN", "-X", "POST", "-d", body])
            .arg(format!("http://{endpoint}{path}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let out = child.stdout.take().expect("curl stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        CurlStream { child, lines }
    }

    fn line(&self) -> Value {
        let l = self
            .lines
            .recv_timeout(WAIT)
            .expect("a streamed line within the timeout");
        json(&l)
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn gateway_kv_lease_and_watch_match_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let (e, o) = (etcd.members[0].endpoint(), oxcd.members[0].endpoint());
    let none = (None, None);

    // KV: put, prev_kv, ranges, a txn (camelCase input), deletes, compaction and its errors.
    for (path, body) in [
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        ),
        ("/v3/kv/put", r#"{"key":"Zm9vMQ==","value":"MQ=="}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true}"#,
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#),
        (
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","limit":1,"sort_order":"DESCEND"}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmF6","result":"EQUAL"}],"success":[{"requestPut":{"key":"Zm9v","value":"cXV4"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"target":"VERSION","key":"Zm9v","version":"1","result":"EQUAL"}],"success":[],"failure":[{"request_range":{"key":"Zm9v"}},{"request_txn":{"success":[{"request_range":{"key":"Zm9vMQ=="}}]}}]}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
        ),
        ("/v3/kv/deleterange", r#"{"key":"Zm9vMQ==","prev_kv":true}"#),
        ("/v3/kv/deleterange", r#"{"key":"Zm9vMQ=="}"#),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#),
        ("/v3/kv/compaction", r#"{"revision":"1000"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"1"}"#),
        ("/v3/kv/put", r#"{"value":"YmFy"}"#),
        // Leases with a client-chosen ID (server-chosen IDs differ by design).
        ("/v3/lease/grant", r#"{"ID":"4242","TTL":"60"}"#),
        ("/v3/lease/grant", r#"{"ID":"4242","TTL":"60"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"bGs=","value":"dg==","lease":"4242"}"#,
        ),
        ("/v3/lease/leases", "{}"),
        ("/v3/kv/lease/timetolive", r#"{"ID":"9999","keys":true}"#),
        ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
    ] {
        same(&e, &o, path, body, none);
    }
    // TTLs count down independently: compare the keys a lease holds and its granted TTL.
    let ttl = |ep: &str| {
        let mut v = json(
            &post(
                ep,
                "/v3/lease/timetolive",
                r#"{"ID":"4242","keys":true}"#,
                None,
            )
            .body,
        );
        v["TTL"] = Value::Null;
        v
    };
    assert_eq!(ttl(&e), ttl(&o));
    let ka = |ep: &str| {
        let mut v = json(&post(ep, "/v3/lease/keepalive", r#"{"ID":"4242"}"#, None).body);
        v["result"]["TTL"] = Value::Null;
        v
    };
    assert_eq!(ka(&e), ka(&o));
    same(&e, &o, "/v3/lease/keepalive", r#"{"ID":"12345"}"#, none);
    // Lock and election through the gateway.
    for (path, body) in [
        ("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":"4242"}"#),
        ("/v3/lock/unlock", r#"{"key":"bXlsb2NrLzEwOTI="}"#),
        (
            "/v3/election/campaign",
            r#"{"name":"ZWxlYw==","value":"djE=","lease":"4242"}"#,
        ),
        ("/v3/election/leader", r#"{"name":"ZWxlYw=="}"#),
        ("/v3/election/leader", r#"{"name":"bm9uZQ=="}"#),
    ] {
        same(&e, &o, path, body, none);
    }
    same(&e, &o, "/v3/lease/revoke", r#"{"ID":"4242"}"#, none);
    same(&e, &o, "/v3/kv/range", r#"{"key":"bGs="}"#, none);

    // Unknown paths and methods.
    for (ep, _) in [(&e, "etcd"), (&o, "oxcd")] {
        let get = curl(&format!("http://{ep}/v3/kv/range"), &[]);
        assert_eq!(
            (get.status, get.body.as_str()),
            (405, "Method Not Allowed\n")
        );
        let unknown = post(ep, "/v3/kv/nope", "{}", None);
        assert_eq!(
            (unknown.status, unknown.body.as_str()),
            (404, "Not Found\n")
        );
        let version = curl(&format!("http://{ep}/version"), &[]);
        let v: Value = serde_json::from_str(&version.body).expect("version json");
        assert!(
            v["etcdserver"]
                .as_str()
                .is_some_and(|s| s.starts_with("3.5.")),
            "{v}"
        );
        assert_eq!(v["etcdcluster"], "3.5.0");
    }

    // A streamed watch: created, then one event per put.
    let we = CurlStream::post(&e, "/v3/watch", r#"{"create_request":{"key":"d2F0Y2g="}}"#);
    let wo = CurlStream::post(&o, "/v3/watch", r#"{"create_request":{"key":"d2F0Y2g="}}"#);
    assert_eq!(we.line(), wo.line());
    same(
        &e,
        &o,
        "/v3/kv/put",
        r#"{"key":"d2F0Y2g=","value":"MQ=="}"#,
        none,
    );
    same(&e, &o, "/v3/kv/deleterange", r#"{"key":"d2F0Y2g="}"#, none);
    assert_eq!(we.line(), wo.line());
    assert_eq!(we.line(), wo.line());
}

#[tokio::test]
async fn gateway_authentication_and_permissions_match_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let (e, o) = (etcd.members[0].endpoint(), oxcd.members[0].endpoint());
    let none = (None, None);
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"123456"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/role/add", r#"{"name":"usr"}"#),
        (
            "/v3/auth/role/grant",
            r#"{"name":"usr","perm":{"permType":"READ","key":"Lw==","range_end":"MA=="}}"#,
        ),
        ("/v3/auth/user/add", r#"{"name":"usr","password":"123456"}"#),
        ("/v3/auth/user/grant", r#"{"user":"usr","role":"usr"}"#),
        ("/v3/kv/put", r#"{"key":"L2Zvbw==","value":"YmFy"}"#),
        ("/v3/auth/enable", "{}"),
        (
            "/v3/auth/authenticate",
            r#"{"name":"usr","password":"wrong"}"#,
        ),
        (
            "/v3/auth/authenticate",
            r#"{"name":"nobody","password":"x"}"#,
        ),
        ("/v3/kv/range", r#"{"key":"L2Zvbw=="}"#),
    ] {
        same(&e, &o, path, body, none);
    }
    let token = |ep: &str, user: &str| {
        let r = post(
            ep,
            "/v3/auth/authenticate",
            &format!(r#"{{"name":"{user}","password":"123456"}}"#),
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).expect("json");
        v["token"].as_str().expect("a token").to_string()
    };
    let (ue, uo) = (token(&e, "usr"), token(&o, "usr"));
    let usr = (Some(ue.as_str()), Some(uo.as_str()));
    same(&e, &o, "/v3/kv/range", r#"{"key":"L2Zvbw=="}"#, usr);
    same(
        &e,
        &o,
        "/v3/kv/put",
        r#"{"key":"L2Zvbw==","value":"eA=="}"#,
        usr,
    );
    same(&e, &o, "/v3/kv/range", r#"{"key":"Zm9v"}"#, usr);
    same(&e, &o, "/v3/auth/disable", "{}", usr);
    same(
        &e,
        &o,
        "/v3/kv/range",
        r#"{"key":"L2Zvbw=="}"#,
        (Some("garbage"), Some("garbage")),
    );
    let (re, ro) = (token(&e, "root"), token(&o, "root"));
    let root = (Some(re.as_str()), Some(ro.as_str()));
    same(&e, &o, "/v3/auth/status", "{}", root);
    same(&e, &o, "/v3/auth/user/get", r#"{"name":"usr"}"#, root);
    same(&e, &o, "/v3/auth/role/get", r#"{"role":"usr"}"#, root);
    same(&e, &o, "/v3/auth/user/list", "{}", root);
    same(&e, &o, "/v3/auth/disable", "{}", root);
    same(&e, &o, "/v3/auth/status", "{}", none);
}

/// A gateway call is counted as the gRPC call it stands for, by oxcd as by etcd (whose gateway
/// is a gRPC client of its own server): a put in `grpc_server_handled_total` of KV/Put with
/// code OK, a range at a future revision with OutOfRange; a body that is not JSON never reaches
/// the service and is not counted.
#[tokio::test]
async fn gateway_calls_count_as_grpc_calls_as_in_etcd() {
    use crate::ops::{handled, scrape, value};
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    for ep in [etcd.members[0].endpoint(), oxcd.members[0].endpoint()] {
        let before = scrape(&ep);
        assert_eq!(
            post(&ep, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, None).status,
            200
        );
        let future = post(
            &ep,
            "/v3/kv/range",
            r#"{"key":"Zm9v","revision":"1000"}"#,
            None,
        );
        assert_eq!(future.status, 400, "{future:?}");
        assert_eq!(post(&ep, "/v3/kv/put", "{not json", None).status, 400);
        let after = scrape(&ep);
        for (series, want) in [
            (handled("Put", "KV", "OK"), 1.0),
            (handled("Range", "KV", "OutOfRange"), 1.0),
            (handled("Put", "KV", "InvalidArgument"), 0.0),
        ] {
            assert_eq!(
                value(&after, &series) - value(&before, &series),
                want,
                "{ep}: {series}"
            );
        }
    }
}

/// A gateway watch reads its request body as it arrives: a second watcher is created on the
/// same open stream after the first one's events came back. The request is written by hand as
/// HTTP/1.1 chunks (curl holds back the last piece of a streamed upload). (etcd's gateway reads
/// the body as a stream too, but in a run by hand it answered each request only once the next one
/// had arrived, which a test cannot wait on; so this runs on oxcd alone.)
#[tokio::test]
async fn a_gateway_watch_takes_requests_while_its_stream_is_open() {
    use std::io::Write;
    let oxcd = Cluster::start(1).await;
    let ep = oxcd.members[0].endpoint();
    let mut sock = std::net::TcpStream::connect(&ep).expect("connect");
    write!(
        sock,
        "POST /v3/watch HTTP/1.1\r\nHost: {ep}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .expect("write the request head");
    let reader = sock.try_clone().expect("clone the socket");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // The response is chunked too: keep the lines that are JSON messages.
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if line.starts_with('{') && tx.send(line).is_err() {
                return;
            }
        }
    });
    // Parsed as is: `json` would blank the watch IDs this test looks at.
    let next = || -> Value {
        serde_json::from_str(&lines.recv_timeout(WAIT).expect("a streamed line in time"))
            .expect("a JSON line")
    };
    let mut send = |body: &str| {
        write!(sock, "{:x}\r\n{body}\r\n", body.len()).expect("write a chunk");
        sock.flush().expect("flush");
    };
    send("{\"create_request\":{\"key\":\"YQ==\"}}\n");
    assert_eq!(next()["result"]["created"], true);
    assert!(etcdctl(&ep, &["put", "a", "1"]).ok);
    assert_eq!(next()["result"]["events"][0]["kv"]["key"], "YQ==");
    // Half of the second request, then the rest: it is taken only once whole.
    send("{\"create_request\":");
    send("{\"key\":\"Yg==\"}}");
    let created = next();
    assert_eq!(created["result"]["created"], true, "{created}");
    assert_eq!(created["result"]["watch_id"], "1", "{created}");
    assert!(etcdctl(&ep, &["put", "b", "2"]).ok);
    let event = next();
    assert_eq!(event["result"]["watch_id"], "1", "{event}");
    assert_eq!(event["result"]["events"][0]["kv"]["key"], "Yg==");
    // A request that is not JSON ends the requests, as grpc-gateway's decoding error does; the
    // watchers already there go on.
    send("nonsense");
    assert!(etcdctl(&ep, &["put", "a", "3"]).ok);
    let event = next();
    assert_eq!(
        event["result"]["events"][0]["kv"]["value"], "Mw==",
        "{event}"
    );
}

/// `curl -i`: the status, the response headers (names lowercased) and the body.
fn curl_i(url: &str, args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `--cors` and `--host-whitelist` as etcd applies them, side by side: a plain-HTTP request
/// naming another host is refused with etcd's 421 and text; a listed origin gets CORS headers
/// echoing it, another origin none (but is served); a preflight is answered alone.
#[tokio::test]
async fn cors_and_host_whitelist_answer_as_etcds() {
    let flags = [
        "--cors=http://good.example:8080",
        "--host-whitelist=127.0.0.1,localhost",
    ];
    let etcd = Cluster::start_with(Kind::Etcd, 1, &flags).await;
    let oxcd = Cluster::start_with(Kind::Oxcd, 1, &flags).await;
    let mut seen = Vec::new();
    for ep in [etcd.members[0].endpoint(), oxcd.members[0].endpoint()] {
        let url = |path: &str| format!("http://{ep}{path}");
        let (status, h, body) = curl_i(&url("/health"), &["-H", "Host: evil.example:2379"]);
        assert_eq!(status, 421, "{ep}: {body}");
        let refused = (header_of(&h, "content-type").map(str::to_string), body);
        let (status, h, _) = curl_i(&url("/health"), &["-H", "Origin: http://good.example:8080"]);
        assert_eq!(status, 200);
        let good = (
            header_of(&h, "access-control-allow-origin").map(str::to_string),
            header_of(&h, "access-control-allow-methods").map(str::to_string),
            header_of(&h, "access-control-allow-headers").map(str::to_string),
        );
        let (status, h, _) = curl_i(&url("/health"), &["-H", "Origin: http://bad.example:8080"]);
        assert_eq!(status, 200);
        let bad = header_of(&h, "access-control-allow-origin").map(str::to_string);
        let (status, h, body) = curl_i(
            &url("/v3/kv/range"),
            &["-X", "OPTIONS", "-H", "Origin: http://good.example:8080"],
        );
        let preflight = (
            status,
            header_of(&h, "access-control-allow-origin").map(str::to_string),
            body,
        );
        seen.push((refused, good, bad, preflight));
    }
    assert_eq!(seen[1], seen[0], "oxcd (right) against etcd (left)");
    assert_eq!(seen[0].1 .0.as_deref(), Some("http://good.example:8080"));
    assert_eq!(seen[0].2, None);
}

/// The `date` header as etcd sends it: on HTTP answers (etcd's Go HTTP server adds one), not on
/// gRPC answers (grpc-go adds none). oxcd's HTTP routes also add it over HTTP/2 (prior
/// knowledge), where hyper's own is turned off for the gRPC calls' sake.
#[tokio::test]
async fn http_answers_carry_a_date_and_grpc_answers_none_as_etcds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A gRPC frame (uncompressed, 3 bytes) holding RangeRequest { key: "a" }.
    let frame = dir.path().join("range.bin");
    std::fs::write(&frame, [0, 0, 0, 0, 3, 0x0a, 0x01, b'a']).expect("write frame");
    let frame_arg = format!("@{}", frame.display());
    let grpc_args = [
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        frame_arg.as_str(),
    ];
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let mut seen = Vec::new();
    for ep in [etcd.members[0].endpoint(), oxcd.members[0].endpoint()] {
        let (status, h, body) = curl_i(&format!("http://{ep}/health"), &[]);
        assert_eq!(status, 200, "{ep}: {body}");
        let http1 = header_of(&h, "date").is_some();
        let (status, h, body) = curl_i(&format!("http://{ep}/etcdserverpb.KV/Range"), &grpc_args);
        assert_eq!(status, 200, "{ep}: {body}");
        assert_eq!(
            header_of(&h, "grpc-status"),
            None,
            "{ep}: status in trailers"
        );
        let grpc = header_of(&h, "date").is_some();
        seen.push((http1, grpc));
    }
    assert_eq!(seen[1], seen[0], "oxcd (right) against etcd (left)");
    assert_eq!(seen[0], (true, false));
    let ep = oxcd.members[0].endpoint();
    let (status, h, body) = curl_i(&format!("http://{ep}/health"), &["--http2-prior-knowledge"]);
    assert_eq!(status, 200, "{body}");
    let date = header_of(&h, "date").expect("a date over HTTP/2");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
}
