//! JWT auth tokens (`--auth-token jwt,...`): minted by one member and accepted by every other
//! (they carry the user and auth revision, signed with the configured key), refused when
//! tampered with, signed by another key, or minted before an auth change; `etcdctl --user` works
//! with them. The key pairs are test-only fixtures in `tests/fixtures/jwt/`.

use oxcd::proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthenticateRequest, PutRequest, RangeRequest,
};
use tonic::Code;

use crate::harness::{etcdctl, Cluster, Kind, Member};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn jwt_flag(method: &str, key: &str) -> String {
    format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method={method},ttl=5m",
        fixture(&format!("{key}.pub")),
        fixture(&format!("{key}.key"))
    )
}

/// Sets up `root` (role root) and `app` (READWRITE on the prefix /app/) and enables auth.
fn setup_auth(ep: &str) {
    for args in [
        &["role", "add", "root"][..],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "--prefix=true",
            "/app/",
        ],
        &["user", "add", "root:rootpw"],
        &["user", "add", "app:apppw"],
        &["user", "grant-role", "root", "root"],
        &["user", "grant-role", "app", "app"],
        &["auth", "enable"],
    ] {
        let r = etcdctl(ep, args);
        assert!(r.ok, "{args:?}: {r:?}");
    }
}

async fn token(m: &Member, user: &str, password: &str) -> Result<String, tonic::Status> {
    let mut a = AuthClient::new(m.channel().await);
    a.authenticate(AuthenticateRequest {
        name: user.to_string(),
        password: password.to_string(),
    })
    .await
    .map(|r| r.into_inner().token)
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("token", token.parse().expect("ASCII token"));
    r
}

async fn put(m: &Member, token: &str, key: &str) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(m.channel().await);
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    kv.put(with_token(req, token)).await.map(|_| ())
}

async fn get(m: &Member, token: &str, key: &str) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut kv = KvClient::new(m.channel().await);
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    kv.range(with_token(req, token))
        .await
        .map(|r| r.into_inner().kvs.into_iter().map(|kv| kv.value).collect())
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, msg: &str) {
    match r {
        Err(s) => assert_eq!((s.code(), s.message()), (code, msg), "{s:?}"),
        Ok(v) => panic!("expected {code:?} {msg:?}, got {v:?}"),
    }
}

/// An RS256 JWT minted by one member of three is accepted by the other two; a tampered token,
/// one signed with another key, and one minted before a role change are refused with etcd's
/// errors; `etcdctl --user` authenticates and works through any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_from_one_member_is_valid_on_every_member_and_cannot_be_forged() {
    let flag = jwt_flag("RS256", "rs256");
    let c = Cluster::start_with(Kind::Oxcd, 3, &[flag.as_str()]).await;
    setup_auth(&c.members[0].endpoint());

    let t = token(&c.members[0], "app", "apppw")
        .await
        .expect("authenticate");
    assert_eq!(t.split('.').count(), 3, "a JWT: {t}");
    for (i, m) in c.members.iter().enumerate() {
        let key = format!("/app/k{i}");
        put(m, &t, &key).await.expect("put with the JWT");
        assert_eq!(get(m, &t, &key).await.expect("get"), [b"v".to_vec()]);
        refused(
            put(m, &t, "/other").await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
    }
    refused(
        token(&c.members[1], "app", "wrong").await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );

    // Tampering with the claims (a different user) breaks the signature.
    let parts: Vec<&str> = t.split('.').collect();
    let root_t = token(&c.members[2], "root", "rootpw")
        .await
        .expect("root token");
    let root_claims = root_t.split('.').nth(1).expect("claims");
    let forged = format!("{}.{}.{}", parts[0], root_claims, parts[2]);
    refused(
        get(&c.members[1], &forged, "/other").await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    // A token signed with a key the cluster does not trust.
    let other = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("other.key")).expect("other.key"),
    )
    .expect("RSA key");
    let claims = serde_json::json!({"username": "root", "revision": 100, "exp": 4_000_000_000u64});
    let foreign = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &other,
    )
    .expect("sign");
    refused(
        get(&c.members[2], &foreign, "/app/k0").await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );

    // etcdctl authenticates on its own and uses the token.
    let r = etcdctl(
        &c.members[2].endpoint(),
        &["--user=app:apppw", "put", "/app/ctl", "v"],
    );
    assert_eq!(r.stdout, "OK\n", "{r:?}");

    // After the user's roles change, the old token is stale everywhere; a new one carries the
    // new permissions.
    let revoke = etcdctl(
        &c.members[0].endpoint(),
        &["--user=root:rootpw", "user", "revoke-role", "app", "app"],
    );
    assert!(revoke.ok, "{revoke:?}");
    for m in &c.members {
        let ep = m.endpoint();
        crate::harness::wait_until(
            "the revoke to reach every member",
            crate::harness::WAIT,
            || {
                let r = etcdctl(&ep, &["--user=root:rootpw", "user", "get", "app"]);
                async move { r.ok && r.stdout == "User: app\nRoles:\n" }
            },
        )
        .await;
        refused(
            get(m, &t, "/app/k0").await,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        );
    }
    let fresh = token(&c.members[1], "app", "apppw")
        .await
        .expect("new token");
    refused(
        get(&c.members[1], &fresh, "/app/k0").await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
}

/// ES256 keys work too, and a bad `--auth-token` is refused at start-up with the flag named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_and_bad_jwt_settings() {
    let flag = jwt_flag("ES256", "es256");
    let c = Cluster::start_with(Kind::Oxcd, 1, &[flag.as_str()]).await;
    let ep = c.members[0].endpoint();
    setup_auth(&ep);
    let r = etcdctl(&ep, &["--user=app:apppw", "put", "/app/es", "v"]);
    assert_eq!(r.stdout, "OK\n", "{r:?}");
    let r = etcdctl(&ep, &["--user=app:apppw", "get", "/app/es"]);
    assert_eq!(r.stdout, "/app/es\nv\n", "{r:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        "--auth-token=jwt,sign-method=RS256".to_string(),
        "--auth-token=paseto".to_string(),
        format!(
            "--auth-token=jwt,pub-key={},priv-key={},sign-method=XX999",
            fixture("rs256.pub"),
            fixture("rs256.key")
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
            .current_dir(dir.path())
            .arg(&bad)
            .output()
            .expect("run oxcd");
        assert!(!out.status.success(), "{bad} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth-token"), "{bad}: {err}");
    }
}
