//! Authentication enforced: etcd's auth tutorial through the real `etcdctl` 3.5 side by side with
//! the real etcd, a permission matrix (users × KV/Watch/Compact/Auth calls) through the
//! `etcd-client` crate and raw gRPC, simple-token lifetimes (password changes, user deletes,
//! auth disable) on several members, and the enabled auth state across restarts.
//!
//! Expected outputs, error strings, gRPC codes and exit codes are etcd 3.5.1's, checked by hand
//! against the real server. Where oxcd is deliberately stricter than etcd 3.5.1 (nested
//! transactions and a transaction's `prev_kv` puts are checked; Compact needs the root role), the
//! matrix says so per server.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Permission, PutOptions,
    Txn, TxnOp,
};
use oxcd::proto::etcdserverpb::{
    self as pb, auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{
    compare, error_line, etcdctl, etcdctl_stdin, step, wait_until, Cluster, Kind, Member, Step,
    WAIT,
};

const DENIED: &str = "etcdserver: permission denied";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
const NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
/// etcd puts the whole gRPC status text of its permission error in a refused watch create's
/// `cancel_reason`, for a forbidden range, a missing token and an unknown token alike.
const WATCH_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
const ROOT_PW: &str = "rootpw";
/// The gRPC metadata key etcd's Go client (and etcdctl) sends the token under; etcd also accepts
/// `authorization`, which the `etcd-client` crate uses.
const TOKEN: &str = "token";

/// Collects mismatches so that one run reports every difference, not only the first.
#[derive(Debug, Default)]
struct Checks(Vec<String>);

impl Checks {
    fn same<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl std::fmt::Display,
        got: T,
        want: T,
    ) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    fn done(self, who: &str) {
        assert!(
            self.0.is_empty(),
            "{who}: {} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC with a token in the request metadata.
// ---------------------------------------------------------------------------------------------

/// A gRPC answer: the value, or the status code and message.
type Reply<T> = Result<T, (Code, String)>;

fn st(s: tonic::Status) -> (Code, String) {
    (s.code(), s.message().to_string())
}

fn denied() -> (Code, String) {
    (Code::PermissionDenied, DENIED.to_string())
}

fn user_empty() -> (Code, String) {
    (Code::InvalidArgument, USER_EMPTY.to_string())
}

fn invalid_token() -> (Code, String) {
    (Code::Unauthenticated, INVALID_TOKEN.to_string())
}

fn auth_failed() -> (Code, String) {
    (Code::InvalidArgument, AUTH_FAILED.to_string())
}

/// `msg` as a request carrying `token` (if any) under metadata key `key`.
fn with_token<T>(msg: T, key: &'static str, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert(key, t.parse().expect("an ASCII token"));
    }
    req
}

/// Authenticate through raw gRPC: the simple token.
async fn authenticate(ch: &Channel, name: &str, password: &str) -> Reply<String> {
    AuthClient::new(ch.clone())
        .authenticate(pb::AuthenticateRequest {
            name: name.to_string(),
            password: password.to_string(),
        })
        .await
        .map(|r| r.into_inner().token)
        .map_err(st)
}

/// The values of a single-key Range sent with `token` under metadata key `key_name`.
async fn get_with(
    ch: &Channel,
    key_name: &'static str,
    token: Option<&str>,
    key: &str,
) -> Reply<Vec<String>> {
    let req = pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    KvClient::new(ch.clone())
        .range(with_token(req, key_name, token))
        .await
        .map(|r| {
            r.into_inner()
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .collect()
        })
        .map_err(st)
}

/// [`get_with`] under the `token` key.
async fn get(ch: &Channel, token: Option<&str>, key: &str) -> Reply<Vec<String>> {
    get_with(ch, TOKEN, token, key).await
}

/// A Put with `token`: the revision it made.
async fn put(ch: &Channel, token: Option<&str>, key: &str, value: &str) -> Reply<i64> {
    let req = pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    KvClient::new(ch.clone())
        .put(with_token(req, TOKEN, token))
        .await
        .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
        .map_err(st)
}

/// `msg` as a request carrying a token freshly minted for root (tokens may be short-lived here).
async fn as_root<T>(ch: &Channel, msg: T) -> tonic::Request<T> {
    let t = authenticate(ch, "root", ROOT_PW)
        .await
        .expect("root authenticates");
    with_token(msg, TOKEN, Some(&t))
}

/// The first answer of a watch stream opened with `token` and one create request (or what went
/// wrong instead).
async fn watch_create(
    ch: &Channel,
    token: Option<&str>,
    key: &str,
    range_end: &str,
) -> Result<pb::WatchResponse, String> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            },
        )),
    })
    .await
    .expect("queue the create request");
    let req = with_token(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        TOKEN,
        token,
    );
    let mut stream = WatchClient::new(ch.clone())
        .watch(req)
        .await
        .map_err(|s| format!("watch refused: {s:?}"))?
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .map_err(|_| format!("no answer to the create within {WAIT:?}"))?
        .map_err(|s| format!("watch stream failed: {s:?}"))?
        .ok_or("watch stream ended before answering")?;
    // The request side stays open until the answer is read: a half-closed stream may end first.
    drop(tx);
    Ok(first)
}

/// A client over one endpoint that authenticated as `name` (the crate sends the token under the
/// `authorization` metadata key).
async fn user_client(ep: &str, name: &str, password: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_user(name, password)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([ep], Some(opts))
        .await
        .unwrap_or_else(|e| panic!("connect to {ep} as {name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. The tutorial through etcdctl.
// ---------------------------------------------------------------------------------------------

/// etcd's authentication tutorial through the real `etcdctl`, against etcd and oxcd step by step
/// with identical exit codes, stdout and `Error:` lines: `auth enable` is refused while there is
/// no root user (`root user does not exist`); with a root user that lacks the root role, etcdctl
/// tries to add the root role itself and reports `role name already exists` (exit 1); once root
/// has the root role, `Authentication Enabled`. Then a readwrite-`/` user may put `/foo` but not
/// `foo`, a read-`/` user may get but not put, no user gives `user name is empty`, a wrong
/// password or unknown user `authentication failed` (exit 2, from the client's Authenticate),
/// `--user u --password p` works like `--user=u:p`, non-root users may not administer but may
/// read their own user and roles, `auth enable` as root while enabled and `auth disable` while
/// disabled succeed, `auth status` counts auth revisions as etcd does (enabling does not raise it,
/// disabling does), and once disabled a request without a user works again. Last, with the root
/// role deleted, `auth enable` succeeds because etcdctl re-creates the role and grants it to root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tutorial_through_etcdctl_matches_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let (e, o) = (etcd.endpoints(), oxcd.endpoints());
    let denied = "Error: etcdserver: permission denied";
    let no_user = "Error: etcdserver: user name is empty";
    let failed = "Error: etcdserver: authentication failed, invalid user ID or password";
    let foo = "/foo\nbar\n";
    // (arguments, exit code, stdout, `Error:` line)
    let cases: &[(&[&str], i32, &str, &str)] = &[
        (
            &["auth", "enable"],
            1,
            "",
            "Error: etcdserver: root user does not exist",
        ),
        (&["role", "add", "root"], 0, "Role root created\n", ""),
        (&["role", "add", "admin"], 0, "Role admin created\n", ""),
        (&["role", "add", "usr"], 0, "Role usr created\n", ""),
        (
            &[
                "role",
                "grant-permission",
                "admin",
                "readwrite",
                "--prefix=true",
                "/",
            ],
            0,
            "Role admin updated\n",
            "",
        ),
        (
            &[
                "role",
                "grant-permission",
                "usr",
                "read",
                "--prefix=true",
                "/",
            ],
            0,
            "Role usr updated\n",
            "",
        ),
        (
            &["user", "add", "root:123456"],
            0,
            "User root created\n",
            "",
        ),
        (
            &["user", "add", "admin:123456"],
            0,
            "User admin created\n",
            "",
        ),
        (&["user", "add", "usr:123456"], 0, "User usr created\n", ""),
        // AuthEnable answers `root user does not have root role`; etcdctl then adds the root role
        // (to grant it to root), which exists.
        (
            &["auth", "enable"],
            1,
            "",
            "Error: etcdserver: role name already exists",
        ),
        (
            &["auth", "status"],
            0,
            "Authentication Status: false\nAuthRevision: 9\n",
            "",
        ),
        (
            &["user", "grant-role", "root", "root"],
            0,
            "Role root is granted to user root\n",
            "",
        ),
        (
            &["user", "grant-role", "admin", "admin"],
            0,
            "Role admin is granted to user admin\n",
            "",
        ),
        (
            &["user", "grant-role", "usr", "usr"],
            0,
            "Role usr is granted to user usr\n",
            "",
        ),
        (&["auth", "enable"], 0, "Authentication Enabled\n", ""),
        (&["auth", "enable"], 1, "", no_user),
        (&["--user=admin:123456", "put", "foo", "bar"], 1, "", denied),
        (
            &["--user=admin:123456", "put", "/foo", "bar"],
            0,
            "OK\n",
            "",
        ),
        (&["--user=usr:123456", "get", "/foo"], 0, foo, ""),
        (
            &["--user=usr:123456", "put", "/foo", "bar_new"],
            1,
            "",
            denied,
        ),
        (&["get", "/foo"], 1, "", no_user),
        (&["put", "/foo", "x"], 1, "", no_user),
        (&["--user=usr:wrong", "get", "/foo"], 2, "", failed),
        (&["--user=nosuch:123456", "get", "/foo"], 2, "", failed),
        (
            &["--user", "usr", "--password", "123456", "get", "/foo"],
            0,
            foo,
            "",
        ),
        (&["--user=usr:123456", "auth", "disable"], 1, "", denied),
        (&["--user=usr:123456", "auth", "status"], 1, "", denied),
        // Enabling did not raise the auth revision (9 + three grants).
        (
            &["--user=root:123456", "auth", "status"],
            0,
            "Authentication Status: true\nAuthRevision: 12\n",
            "",
        ),
        (
            &["--user=usr:123456", "user", "get", "usr"],
            0,
            "User: usr\nRoles: usr\n",
            "",
        ),
        (
            &["--user=usr:123456", "user", "get", "admin"],
            1,
            "",
            denied,
        ),
        (
            &["--user=usr:123456", "role", "get", "usr"],
            0,
            "Role usr\nKV Read:\n\t[/, 0) (prefix /)\nKV Write:\n",
            "",
        ),
        (
            &["--user=usr:123456", "role", "get", "admin"],
            1,
            "",
            denied,
        ),
        (
            &["--user=root:123456", "auth", "enable"],
            0,
            "Authentication Enabled\n",
            "",
        ),
        (
            &["--user=root:123456", "auth", "disable"],
            0,
            "Authentication Disabled\n",
            "",
        ),
        // Disabled: etcdctl's Authenticate gets `authentication is not enabled`, which it ignores.
        (
            &["--user=root:123456", "auth", "disable"],
            0,
            "Authentication Disabled\n",
            "",
        ),
        (&["get", "/foo"], 0, foo, ""),
        (
            &["auth", "status"],
            0,
            "Authentication Status: false\nAuthRevision: 13\n",
            "",
        ),
        (&["role", "delete", "root"], 0, "Role root deleted\n", ""),
        (&["user", "get", "root"], 0, "User: root\nRoles:\n", ""),
        (&["auth", "enable"], 0, "Authentication Enabled\n", ""),
        (
            &["--user=root:123456", "user", "get", "root"],
            0,
            "User: root\nRoles: root\n",
            "",
        ),
        (
            &["--user=root:123456", "role", "list"],
            0,
            "admin\nroot\nusr\n",
            "",
        ),
        (
            &["--user=root:123456", "auth", "disable"],
            0,
            "Authentication Disabled\n",
            "",
        ),
        (&["get", "/foo"], 0, foo, ""),
    ];
    let steps: Vec<Step> = cases.iter().map(|(args, ..)| step(args)).collect();
    let outs = compare(&e, &o, &steps);
    for ((args, code, stdout, error), got) in cases.iter().zip(&outs) {
        let what = args.join(" ");
        assert_eq!(
            got.code,
            Some(*code),
            "exit code of `etcdctl {what}`: {got:?}"
        );
        assert_eq!(got.stdout, *stdout, "stdout of `etcdctl {what}`");
        assert_eq!(error_line(got), *error, "error of `etcdctl {what}`");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The permission matrix.
// ---------------------------------------------------------------------------------------------

/// Who makes a call in the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// Has the root role.
    Root,
    /// READ over the prefix `/app/`.
    Reader,
    /// WRITE over the prefix `/app/`.
    Writer,
    /// READWRITE over the prefix `/other/`.
    Other,
    /// No token at all.
    Anonymous,
}

const EVERYONE: [Who; 5] = [
    Who::Root,
    Who::Reader,
    Who::Writer,
    Who::Other,
    Who::Anonymous,
];

impl Who {
    /// (user, password, role) of a user; `None` for the anonymous caller.
    fn credentials(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Who::Root => Some(("root", ROOT_PW, "root")),
            Who::Reader => Some(("reader", "readerpw", "app-read")),
            Who::Writer => Some(("writer", "writerpw", "app-write")),
            Who::Other => Some(("other", "otherpw", "other")),
            Who::Anonymous => None,
        }
    }
}

/// One call of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Range `/app/k`.
    Get,
    /// Range over the prefix `/app/`.
    GetPrefix,
    /// Range `/secret`.
    GetSecret,
    /// Put `/app/k`.
    Put,
    /// Put `/app/k` with `prev_kv` (needs READ too).
    PutPrevKv,
    /// DeleteRange `/app/k`.
    Delete,
    /// DeleteRange `/app/k` with `prev_kv` (needs READ too).
    DeletePrevKv,
    /// A Txn without compares (the success branch runs) putting `/app/k`, whose failure branch
    /// puts `/secret`: both branches are checked.
    TxnFailureBranchPutsSecret,
    /// A Txn putting `/app/k` and, in a nested Txn, `/secret`.
    TxnNestedPutsSecret,
    /// A Txn putting `/app/k` with `prev_kv`.
    TxnPutPrevKv,
    /// A Txn comparing `/app/k`, no ops.
    TxnCompareApp,
    /// A Txn comparing `/secret`, no ops.
    TxnCompareSecret,
    /// A Txn reading `/app/k`.
    TxnGet,
    /// A watch over the prefix `/app/`.
    WatchApp,
    /// A watch on `/secret`.
    WatchSecret,
    /// Compact at the current revision.
    Compact,
    /// UserList.
    UserList,
    /// UserGet `reader`.
    UserGetReader,
    /// RoleGet `app-read`.
    RoleGetAppRead,
    /// RoleList.
    RoleList,
    /// LeaseTimeToLive (with keys) of a lease root attached to `/app/leased`.
    LeaseTimeToLiveApp,
    /// LeaseRevoke of a lease root attached to `/app/leased`.
    LeaseRevokeApp,
    /// MemberList.
    MemberList,
    /// Defragment.
    Defragment,
}

const CALLS: [Call; 24] = [
    Call::Get,
    Call::GetPrefix,
    Call::GetSecret,
    Call::Put,
    Call::PutPrevKv,
    Call::Delete,
    Call::DeletePrevKv,
    Call::TxnFailureBranchPutsSecret,
    Call::TxnNestedPutsSecret,
    Call::TxnPutPrevKv,
    Call::TxnCompareApp,
    Call::TxnCompareSecret,
    Call::TxnGet,
    Call::WatchApp,
    Call::WatchSecret,
    Call::Compact,
    Call::UserList,
    Call::UserGetReader,
    Call::RoleGetAppRead,
    Call::RoleList,
    Call::LeaseTimeToLiveApp,
    Call::LeaseRevokeApp,
    Call::MemberList,
    Call::Defragment,
];

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// It succeeded (a watch: created and not canceled).
    Allowed,
    /// PermissionDenied, `etcdserver: permission denied`.
    Denied,
    /// InvalidArgument, `etcdserver: user name is empty`.
    NoUser,
    /// A watch create answered created and canceled, on the requested watch ID (0), with
    /// [`WATCH_DENIED`].
    WatchDenied,
    /// Anything else.
    Other(String),
}

fn outcome<T>(r: Result<T, etcd_client::Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Allowed,
        Err(etcd_client::Error::GRpcStatus(s)) => match (s.code(), s.message()) {
            (Code::PermissionDenied, DENIED) => Outcome::Denied,
            (Code::InvalidArgument, USER_EMPTY) => Outcome::NoUser,
            (code, msg) => Outcome::Other(format!("{code:?}: {msg}")),
        },
        Err(e) => Outcome::Other(e.to_string()),
    }
}

fn watch_outcome(r: Result<pb::WatchResponse, String>) -> Outcome {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Outcome::Other(e),
    };
    if r.created && !r.canceled {
        Outcome::Allowed
    } else if r.created && r.canceled && r.watch_id == 0 && r.cancel_reason == WATCH_DENIED {
        Outcome::WatchDenied
    } else {
        Outcome::Other(format!(
            "watch_id {} created {} canceled {} cancel_reason {:?}",
            r.watch_id, r.created, r.canceled, r.cancel_reason
        ))
    }
}

/// What `who` gets for `call` from `kind`.
fn expected(call: Call, who: Who, kind: Kind) -> Outcome {
    use Who::{Anonymous, Reader, Root, Writer};
    let allowed: Vec<Who> = match call {
        Call::Get | Call::GetPrefix | Call::TxnCompareApp | Call::TxnGet | Call::WatchApp => {
            vec![Root, Reader]
        }
        Call::UserGetReader | Call::RoleGetAppRead => vec![Root, Reader],
        // etcd 3.5.1 does not check LeaseTimeToLive (later 3.5 releases check READ on the
        // lease's keys, as oxcd does).
        Call::LeaseTimeToLiveApp if kind == Kind::Etcd => EVERYONE.to_vec(),
        Call::LeaseTimeToLiveApp => vec![Root, Reader],
        Call::LeaseRevokeApp => vec![Root, Writer],
        Call::MemberList => EVERYONE.to_vec(),
        Call::Put | Call::Delete => vec![Root, Writer],
        // etcd 3.5.1 does not look into nested transactions, nor at a transaction's puts'
        // `prev_kv`; oxcd checks both.
        Call::TxnNestedPutsSecret | Call::TxnPutPrevKv if kind == Kind::Etcd => vec![Root, Writer],
        // etcd 3.5.1 does not check Compact at all; oxcd wants the root role.
        Call::Compact if kind == Kind::Etcd => EVERYONE.to_vec(),
        _ => vec![Root],
    };
    if allowed.contains(&who) {
        Outcome::Allowed
    } else if call == Call::Defragment {
        // etcd's maintenance service returns the auth store's own error unconverted: code
        // Unknown and the text without `etcdserver: `; oxcd answers the same.
        Outcome::Other(if who == Anonymous {
            "Unknown: auth: user name is empty".to_string()
        } else {
            "Unknown: auth: permission denied".to_string()
        })
    } else if matches!(call, Call::WatchApp | Call::WatchSecret) {
        Outcome::WatchDenied
    } else if who == Anonymous {
        Outcome::NoUser
    } else {
        Outcome::Denied
    }
}

/// One caller of the matrix: an `etcd-client` (authenticated unless anonymous) and a raw token.
struct Caller {
    who: Who,
    client: Client,
    token: Option<String>,
}

async fn run(call: Call, c: &mut Caller, ch: &Channel, root_token: &str) -> Outcome {
    let token = c.token.as_deref();
    let cl = &mut c.client;
    let put_app = || TxnOp::put("/app/k", "t", None);
    match call {
        Call::Get => outcome(cl.get("/app/k", None).await),
        Call::GetPrefix => outcome(cl.get("/app/", Some(GetOptions::new().with_prefix())).await),
        Call::GetSecret => outcome(cl.get("/secret", None).await),
        Call::Put => outcome(cl.put("/app/k", "v", None).await),
        Call::PutPrevKv => outcome(
            cl.put("/app/k", "v", Some(PutOptions::new().with_prev_key()))
                .await,
        ),
        Call::Delete => outcome(cl.delete("/app/k", None).await),
        Call::DeletePrevKv => outcome(
            cl.delete("/app/k", Some(DeleteOptions::new().with_prev_key()))
                .await,
        ),
        Call::TxnFailureBranchPutsSecret => {
            let txn = Txn::new()
                .and_then(vec![put_app()])
                .or_else(vec![TxnOp::put("/secret", "t", None)]);
            outcome(cl.txn(txn).await)
        }
        Call::TxnNestedPutsSecret => {
            let nested = Txn::new().and_then(vec![TxnOp::put("/secret", "t", None)]);
            let txn = Txn::new().and_then(vec![put_app(), TxnOp::txn(nested)]);
            outcome(cl.txn(txn).await)
        }
        Call::TxnPutPrevKv => {
            let op = TxnOp::put("/app/k", "t", Some(PutOptions::new().with_prev_key()));
            outcome(cl.txn(Txn::new().and_then(vec![op])).await)
        }
        Call::TxnCompareApp => {
            let txn = Txn::new().when(vec![Compare::version("/app/k", CompareOp::Greater, 0)]);
            outcome(cl.txn(txn).await)
        }
        Call::TxnCompareSecret => {
            let txn = Txn::new().when(vec![Compare::version("/secret", CompareOp::Greater, 0)]);
            outcome(cl.txn(txn).await)
        }
        Call::TxnGet => {
            let txn = Txn::new().and_then(vec![TxnOp::get("/app/k", None)]);
            outcome(cl.txn(txn).await)
        }
        Call::WatchApp => watch_outcome(watch_create(ch, token, "/app/", "/app0").await),
        Call::WatchSecret => watch_outcome(watch_create(ch, token, "/secret", "").await),
        Call::Compact => {
            // A new revision for every caller, so an allowed compaction never meets an already
            // compacted revision.
            let rev = put(ch, Some(root_token), "/app/compact", "x")
                .await
                .expect("root puts");
            outcome(cl.compact(rev, None).await)
        }
        Call::UserList => outcome(cl.user_list().await),
        Call::UserGetReader => outcome(cl.user_get("reader").await),
        Call::RoleGetAppRead => outcome(cl.role_get("app-read").await),
        Call::RoleList => outcome(cl.role_list().await),
        Call::LeaseTimeToLiveApp | Call::LeaseRevokeApp => {
            let id = root_leased_key(ch, root_token, "/app/leased").await;
            if call == Call::LeaseRevokeApp {
                outcome(cl.lease_revoke(id).await)
            } else {
                let keys = Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys());
                outcome(cl.lease_time_to_live(id, keys).await)
            }
        }
        Call::MemberList => outcome(cl.member_list().await),
        Call::Defragment => outcome(cl.defragment().await),
    }
}

/// A fresh 60 s lease granted by root, with `key` put under it; its ID.
async fn root_leased_key(ch: &Channel, root_token: &str, key: &str) -> i64 {
    let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
    let id = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(with_token(grant, TOKEN, Some(root_token)))
        .await
        .expect("root grants a lease")
        .into_inner()
        .id;
    let req = pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease: id,
        ..Default::default()
    };
    KvClient::new(ch.clone())
        .put(with_token(req, TOKEN, Some(root_token)))
        .await
        .expect("root puts a leased key");
    id
}

/// The matrix against one server of `kind`.
async fn permission_matrix(kind: Kind) {
    let who = format!("{kind:?}");
    let c = Cluster::start_with(kind, 1, &[]).await;
    let m = &c.members[0];
    let ep = m.endpoint();
    let ch = m.channel().await;

    // AuthEnable refuses until root can administer, with etcd's codes (etcdctl hides the second
    // refusal, see the tutorial).
    let mut admin = m.client().await;
    let refusal = |r: Result<etcd_client::AuthEnableResponse, etcd_client::Error>| match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("{who}: expected a refused AuthEnable, got {other:?}"),
    };
    assert_eq!(
        refusal(admin.auth_enable().await),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist".to_string()
        ),
        "{who}"
    );
    admin.role_add("root").await.expect("role add root");
    admin
        .user_add("root", ROOT_PW, None)
        .await
        .expect("user add root");
    assert_eq!(
        refusal(admin.auth_enable().await),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role".to_string()
        ),
        "{who}"
    );
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    let grants = [
        ("app-read", Permission::read("/app/").with_prefix()),
        ("app-write", Permission::write("/app/").with_prefix()),
        ("other", Permission::read_write("/other/").with_prefix()),
    ];
    for (role, perm) in grants {
        admin.role_add(role).await.expect("role add");
        admin
            .role_grant_permission(role, perm)
            .await
            .expect("grant permission");
    }
    for w in [Who::Reader, Who::Writer, Who::Other] {
        let (name, pw, role) = w.credentials().expect("a user");
        admin.user_add(name, pw, None).await.expect("user add");
        admin.user_grant_role(name, role).await.expect("grant role");
    }
    for (k, v) in [("/app/k", "v"), ("/secret", "s"), ("/other/k", "o")] {
        admin.put(k, v, None).await.expect("put");
    }
    admin.auth_enable().await.expect("auth enable");
    drop(admin);

    let mut callers = Vec::new();
    for w in EVERYONE {
        let (client, token) = match w.credentials() {
            Some((name, pw, _)) => (
                user_client(&ep, name, pw).await,
                Some(authenticate(&ch, name, pw).await.expect("authenticate")),
            ),
            None => (m.client().await, None),
        };
        callers.push(Caller {
            who: w,
            client,
            token,
        });
    }
    let root_token = callers[0].token.clone().expect("root's token");

    let mut checks = Checks::default();
    for call in CALLS {
        for caller in callers.iter_mut() {
            let got = run(call, caller, &ch, &root_token).await;
            let want = expected(call, caller.who, kind);
            checks.same(format!("{call:?} by {:?}", caller.who), got, want);
        }
    }
    checks.done(&who);
}

/// With authentication on, every call is allowed or refused per user exactly as etcd does it
/// (through `etcd-client` logged in with `ConnectOptions::with_user`, which sends its token under
/// the `authorization` metadata key; watches through raw gRPC with the `token` key): Range needs
/// READ over its range, Put and DeleteRange WRITE (and READ with `prev_kv`), a Txn READ on every
/// compare and the permission of every op of both branches (a forbidden put hidden in the branch
/// that does not run is refused), UserList/RoleList need root, a user may get itself and its own
/// role. A refusal is PermissionDenied `etcdserver: permission denied`; a call without a token
/// is InvalidArgument `etcdserver: user name is empty`; a refused watch create is answered
/// created+canceled on the requested watch ID with etcd's reason, for no token as well. AuthEnable
/// is refused (FailedPrecondition) without a root user and while root lacks the root role.
/// oxcd is stricter than etcd 3.5.1 on nested transactions, a transaction's `prev_kv` puts and
/// Compact (root only); etcd 3.5.1 lets a writer through on the first two and anyone compact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix_through_etcd_client() {
    permission_matrix(Kind::Etcd).await;
    permission_matrix(Kind::Oxcd).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Simple tokens.
// ---------------------------------------------------------------------------------------------

async fn root_grant(ch: &Channel, user: &str, role: &str) {
    let msg = pb::AuthUserGrantRoleRequest {
        user: user.to_string(),
        role: role.to_string(),
    };
    AuthClient::new(ch.clone())
        .user_grant_role(as_root(ch, msg).await)
        .await
        .expect("grant role");
}

async fn root_revoke(ch: &Channel, user: &str, role: &str) {
    let msg = pb::AuthUserRevokeRoleRequest {
        name: user.to_string(),
        role: role.to_string(),
    };
    AuthClient::new(ch.clone())
        .user_revoke_role(as_root(ch, msg).await)
        .await
        .expect("revoke role");
}

/// The script of [`tokens_expire_and_go_stale_on_auth_changes`] against a 3-member cluster.
async fn token_script(kind: Kind) {
    let who = format!("{kind:?}");
    let c = Cluster::start_with(kind, 3, &[]).await;
    let mut chans = Vec::new();
    for m in &c.members {
        chans.push(m.channel().await);
    }
    let ch = &chans[0];
    {
        let mut admin = c.members[0].client().await;
        for role in ["root", "app-read", "app-write"] {
            admin.role_add(role).await.expect("role add");
        }
        admin
            .role_grant_permission("app-read", Permission::read("/app/").with_prefix())
            .await
            .expect("grant read");
        admin
            .role_grant_permission("app-write", Permission::write("/app/").with_prefix())
            .await
            .expect("grant write");
        for (user, pw, role) in [
            ("root", ROOT_PW, "root"),
            ("reader", "readerpw", "app-read"),
            ("temp", "temppw", "app-read"),
        ] {
            admin.user_add(user, pw, None).await.expect("user add");
            admin.user_grant_role(user, role).await.expect("grant role");
        }
        admin.put("/app/k", "v", None).await.expect("put");
        admin.auth_enable().await.expect("auth enable");
    }
    let mut ck = Checks::default();
    let v = || -> Reply<Vec<String>> { Ok(vec!["v".to_string()]) };

    // Authenticate refusals.
    ck.same(
        "Authenticate with a wrong password",
        authenticate(ch, "reader", "nope").await.err(),
        Some(auth_failed()),
    );
    ck.same(
        "Authenticate an unknown user",
        authenticate(ch, "nosuch", "readerpw").await.err(),
        Some(auth_failed()),
    );

    // A token minted through any member is good on every member at once (it goes through the
    // log), under either metadata key.
    for (i, mint) in chans.iter().enumerate() {
        let t = authenticate(mint, "reader", "readerpw")
            .await
            .expect("authenticate");
        for (j, other) in chans.iter().enumerate() {
            ck.same(
                format!(
                    "a token minted on member {} used at once on member {}",
                    i + 1,
                    j + 1
                ),
                get(other, Some(&t), "/app/k").await,
                v(),
            );
        }
        ck.same(
            format!("a token minted on member {} sent as `authorization`", i + 1),
            get_with(mint, "authorization", Some(&t), "/app/k").await,
            v(),
        );
    }
    ck.same(
        "a token the cluster never issued",
        get(ch, Some("NotARealToken.1"), "/app/k").await,
        Err(invalid_token()),
    );
    ck.same("no token", get(ch, None, "/app/k").await, Err(user_empty()));

    // Role grants and revokes apply to the tokens already out: a simple token names a user,
    // whose permissions are looked up when the token is used.
    let t = authenticate(ch, "reader", "readerpw")
        .await
        .expect("authenticate");
    ck.same(
        "a put without WRITE",
        put(ch, Some(&t), "/app/k", "w").await.err(),
        Some(denied()),
    );
    root_grant(ch, "reader", "app-write").await;
    ck.same(
        "a put with the same token after WRITE is granted",
        put(ch, Some(&t), "/app/k", "w").await.map(|_| ()),
        Ok(()),
    );
    root_revoke(ch, "reader", "app-write").await;
    ck.same(
        "a put with the same token after WRITE is revoked",
        put(ch, Some(&t), "/app/k", "w2").await.err(),
        Some(denied()),
    );
    ck.same(
        "a read with the same token after the revoke",
        get(ch, Some(&t), "/app/k").await.map(|_| ()),
        Ok(()),
    );
    let add = pb::AuthUserAddRequest {
        name: "carol".to_string(),
        password: "carolpw".to_string(),
        ..Default::default()
    };
    AuthClient::new(ch.clone())
        .user_add(as_root(ch, add).await)
        .await
        .expect("user add carol");
    ck.same(
        "a read after an unrelated user is added",
        get(ch, Some(&t), "/app/k").await.map(|_| ()),
        Ok(()),
    );

    // Deleting a user or changing its password ends its tokens.
    let x = authenticate(ch, "temp", "temppw")
        .await
        .expect("authenticate temp");
    ck.same(
        "temp reads",
        get(ch, Some(&x), "/app/k").await.map(|_| ()),
        Ok(()),
    );
    let del = pb::AuthUserDeleteRequest {
        name: "temp".to_string(),
    };
    AuthClient::new(ch.clone())
        .user_delete(as_root(ch, del).await)
        .await
        .expect("user delete temp");
    ck.same(
        "the token of a deleted user",
        get(ch, Some(&x), "/app/k").await.err(),
        Some(invalid_token()),
    );
    let passwd = pb::AuthUserChangePasswordRequest {
        name: "reader".to_string(),
        password: "readerpw2".to_string(),
        ..Default::default()
    };
    AuthClient::new(ch.clone())
        .user_change_password(as_root(ch, passwd).await)
        .await
        .expect("change reader's password");
    ck.same(
        "a token from before a password change",
        get(ch, Some(&t), "/app/k").await.err(),
        Some(invalid_token()),
    );
    ck.same(
        "Authenticate with the old password",
        authenticate(ch, "reader", "readerpw").await.err(),
        Some(auth_failed()),
    );
    let t2 = authenticate(ch, "reader", "readerpw2")
        .await
        .expect("authenticate with the new password");
    ck.same(
        "a token for the new password",
        get(ch, Some(&t2), "/app/k").await.map(|_| ()),
        Ok(()),
    );

    // Disabling authentication drops every token: while disabled a request carrying one is
    // refused (a request without one is served), and none is good again after re-enabling.
    AuthClient::new(ch.clone())
        .auth_disable(as_root(ch, pb::AuthDisableRequest {}).await)
        .await
        .expect("auth disable");
    ck.same(
        "auth disabled: a request without a token",
        get(ch, None, "/app/k").await.map(|_| ()),
        Ok(()),
    );
    ck.same(
        "auth disabled: Authenticate",
        authenticate(ch, "reader", "readerpw2").await.err(),
        Some((Code::FailedPrecondition, NOT_ENABLED.to_string())),
    );
    ck.same(
        "auth disabled: a request carrying a token from before",
        get(ch, Some(&t2), "/app/k").await.err(),
        Some(invalid_token()),
    );
    AuthClient::new(ch.clone())
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("auth enable");
    ck.same(
        "re-enabled: a token from before the disable",
        get(ch, Some(&t2), "/app/k").await.err(),
        Some(invalid_token()),
    );
    ck.same(
        "re-enabled: no token",
        get(ch, None, "/app/k").await.err(),
        Some(user_empty()),
    );
    let t3 = authenticate(ch, "reader", "readerpw2")
        .await
        .expect("authenticate after re-enabling");
    ck.same(
        "re-enabled: a fresh token",
        get(ch, Some(&t3), "/app/k").await.map(|_| ()),
        Ok(()),
    );
    ck.done(&who);
}

/// Simple tokens (raw gRPC, metadata key `token`), on etcd and oxcd alike:
/// Authenticate refuses a wrong password or unknown user (InvalidArgument `authentication
/// failed`); a token minted through any member of a 3-member cluster is accepted by every member
/// at once, also under the `authorization` key; an unknown token is Unauthenticated `invalid auth
/// token` and no token InvalidArgument `user name is empty` (the TTL of tokens is unit-tested on
/// a manual clock in `src/auth/tests.rs`, without waiting). A role granted to or
/// revoked from the user takes effect on the token already out, and an unrelated change leaves it
/// alone (etcd's simple tokens carry no auth revision: `revision of auth store is old` only
/// guards a request against a change committed between its check and its apply); deleting the
/// user or changing its password invalidates its tokens (the old password then fails, the new
/// one works); disabling auth drops every token: while disabled a request carrying one is
/// refused as `invalid auth token`, and none comes back when auth is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_work_on_every_member_and_follow_auth_changes() {
    token_script(Kind::Etcd).await;
    token_script(Kind::Oxcd).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Restarts.
// ---------------------------------------------------------------------------------------------

/// Runs `etcdctl args` (with `stdin`) and asserts it succeeds and prints `want`.
fn ctl_ok(ep: &str, args: &[&str], stdin: Option<&str>, want: &str) {
    let r = etcdctl_stdin(ep, args, stdin);
    assert!(
        r.ok && r.stdout == want,
        "etcdctl {args:?} against {ep}: want {want:?}, got {r:?}"
    );
}

/// What root sees of the auth state through one member.
const VIEWS: &[&[&str]] = &[
    &["user", "list"],
    &["role", "list"],
    &["user", "get", "alice"],
    &["role", "get", "app-read"],
    &["role", "get", "app-write"],
    &["auth", "status"],
];

fn views(ep: &str) -> Vec<String> {
    VIEWS
        .iter()
        .map(|args| {
            let mut a = vec!["--user=root:rootpw"];
            a.extend_from_slice(args);
            let r = etcdctl(ep, &a);
            format!("{}{}", r.stdout, error_line(&r))
        })
        .collect()
}

/// Waits until root sees `want` through `m`.
async fn wait_views(m: &Member, want: &[String]) {
    let ep = m.endpoint();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = views(&ep);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: root sees {got:#?}, the others {want:#?}",
            m.spec.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `m` authenticates root and serves it a serializable read (the harness's
/// `wait_serving` reads without a token, which authentication refuses).
async fn wait_serving_as_root(m: &Member) {
    let ep = m.endpoint();
    wait_until(
        &format!("{} to serve root after its restart", m.spec.name),
        WAIT,
        || {
            let ep = ep.clone();
            async move {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(2));
                let Ok(ch) = endpoint.connect().await else {
                    return false;
                };
                let Ok(t) = authenticate(&ch, "root", ROOT_PW).await else {
                    return false;
                };
                let req = pb::RangeRequest {
                    key: b"health-probe".to_vec(),
                    serializable: true,
                    ..Default::default()
                };
                KvClient::new(ch)
                    .range(with_token(req, TOKEN, Some(&t)))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
}

/// Through `ep`: alice (password `alice_pw`) reads `/app/k`, may put it iff `alice_writes`, may
/// not read `/secret`; bob reads `/app/k` iff `bob_exists`; no user and a wrong password are
/// refused.
fn check_enforced(ep: &str, alice_pw: &str, alice_writes: bool, bob_exists: bool) {
    let denied = "Error: etcdserver: permission denied".to_string();
    let alice = format!("--user=alice:{alice_pw}");
    let alice = alice.as_str();
    let r = etcdctl(ep, &[alice, "get", "/app/k"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "/app/k\nv\n"),
        "{ep}: alice reads /app/k: {r:?}"
    );
    let r = etcdctl(ep, &[alice, "put", "/app/k", "v"]);
    if alice_writes {
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (Some(0), "OK\n"),
            "{ep}: alice writes /app/k: {r:?}"
        );
    } else {
        assert_eq!(
            (r.code, error_line(&r)),
            (Some(1), denied.clone()),
            "{ep}: alice may not write /app/k: {r:?}"
        );
    }
    let r = etcdctl(ep, &[alice, "get", "/secret"]);
    assert_eq!(
        (r.code, error_line(&r)),
        (Some(1), denied),
        "{ep}: alice may not read /secret: {r:?}"
    );
    let r = etcdctl(ep, &["--user=bob:bobpw", "get", "/app/k"]);
    if bob_exists {
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (Some(0), "/app/k\nv\n"),
            "{ep}: bob reads /app/k: {r:?}"
        );
    } else {
        assert_eq!(
            (r.code, error_line(&r)),
            (
                Some(2),
                "Error: etcdserver: authentication failed, invalid user ID or password".to_string()
            ),
            "{ep}: bob does not exist yet: {r:?}"
        );
    }
    let r = etcdctl(ep, &["get", "/app/k"]);
    assert_eq!(
        (r.code, error_line(&r)),
        (Some(1), "Error: etcdserver: user name is empty".to_string()),
        "{ep}: no user: {r:?}"
    );
    let r = etcdctl(ep, &["--user=alice:wrong", "get", "/app/k"]);
    assert_eq!(
        (r.code, error_line(&r)),
        (
            Some(2),
            "Error: etcdserver: authentication failed, invalid user ID or password".to_string()
        ),
        "{ep}: a wrong password: {r:?}"
    );
}

/// alice authenticates through every member, and each token is accepted at once by the next
/// member.
async fn tokens_cross_members(c: &Cluster, alice_pw: &str) {
    let mut chans = Vec::new();
    for m in &c.members {
        chans.push(m.channel().await);
    }
    for (i, mint) in chans.iter().enumerate() {
        let t = authenticate(mint, "alice", alice_pw)
            .await
            .unwrap_or_else(|e| panic!("alice authenticates through member {}: {e:?}", i + 1));
        let j = (i + 1) % chans.len();
        assert_eq!(
            get(&chans[j], Some(&t), "/app/k").await,
            Ok(vec!["v".to_string()]),
            "a token minted on member {} used on member {}",
            i + 1,
            j + 1
        );
    }
}

/// With authentication enabled on a 3-member oxcd cluster, every member enforces the same users,
/// roles and permissions and shows root the same auth state (users, roles, `auth status`); a
/// member that was down while a role was granted, a user added and a password changed comes back
/// enforcing the new state (the new password works on it, the old one does not); after the whole
/// cluster restarts authentication is still on (no user: `user name is empty`) with the same
/// state everywhere, every member authenticates alice, and a token minted through one member is
/// accepted by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_auth_survives_restarts_and_is_enforced_by_every_member() {
    let mut c = Cluster::start(3).await;
    let ep1 = c.members[0].endpoint();
    let setup: &[(&[&str], &str)] = &[
        (&["role", "add", "root"], "Role root created\n"),
        (&["user", "add", "root:rootpw"], "User root created\n"),
        (
            &["user", "grant-role", "root", "root"],
            "Role root is granted to user root\n",
        ),
        (&["role", "add", "app-read"], "Role app-read created\n"),
        (
            &[
                "role",
                "grant-permission",
                "app-read",
                "read",
                "--prefix=true",
                "/app/",
            ],
            "Role app-read updated\n",
        ),
        (&["role", "add", "app-write"], "Role app-write created\n"),
        (
            &[
                "role",
                "grant-permission",
                "app-write",
                "write",
                "--prefix=true",
                "/app/",
            ],
            "Role app-write updated\n",
        ),
        (&["user", "add", "alice:alicepw"], "User alice created\n"),
        (
            &["user", "grant-role", "alice", "app-read"],
            "Role app-read is granted to user alice\n",
        ),
        (&["put", "/app/k", "v"], "OK\n"),
        (&["put", "/secret", "s"], "OK\n"),
        (&["auth", "enable"], "Authentication Enabled\n"),
    ];
    for (args, out) in setup {
        ctl_ok(&ep1, args, None, out);
    }
    let before = views(&ep1);
    assert_eq!(before[0], "alice\nroot\n", "user list");
    assert!(
        before[5].starts_with("Authentication Status: true\n"),
        "{before:?}"
    );
    for m in &c.members {
        wait_views(m, &before).await;
        check_enforced(&m.endpoint(), "alicepw", false, false);
    }

    // Changes while member 3 is down.
    assert!(c.members[2].stop().await, "clean exit on SIGTERM");
    c.wait_leader().await;
    let changes: &[(&[&str], Option<&str>, &str)] = &[
        (
            &[
                "--user=root:rootpw",
                "user",
                "grant-role",
                "alice",
                "app-write",
            ],
            None,
            "Role app-write is granted to user alice\n",
        ),
        (
            &["--user=root:rootpw", "user", "add", "bob:bobpw"],
            None,
            "User bob created\n",
        ),
        (
            &[
                "--user=root:rootpw",
                "user",
                "grant-role",
                "bob",
                "app-read",
            ],
            None,
            "Role app-read is granted to user bob\n",
        ),
        (
            &[
                "--user=root:rootpw",
                "user",
                "passwd",
                "alice",
                "--interactive=false",
            ],
            Some("alicepw2\n"),
            "Password updated\n",
        ),
    ];
    for (args, stdin, out) in changes {
        ctl_ok(&ep1, args, *stdin, out);
    }
    let after = views(&ep1);
    assert_eq!(after[0], "alice\nbob\nroot\n", "user list");
    assert_eq!(after[2], "User: alice\nRoles: app-read app-write\n");
    assert_ne!(after[5], before[5], "auth status: the auth revision moved");

    c.members[2].start();
    wait_serving_as_root(&c.members[2]).await;
    for m in &c.members {
        wait_views(m, &after).await;
        check_enforced(&m.endpoint(), "alicepw2", true, true);
    }

    // The whole cluster down and up again: auth state and the enabled flag come back from disk.
    for m in c.members.iter_mut() {
        assert!(m.stop().await, "clean exit on SIGTERM");
    }
    for m in c.members.iter_mut() {
        m.start();
    }
    for m in &c.members {
        wait_serving_as_root(m).await;
    }
    c.wait_leader().await;
    for m in &c.members {
        wait_views(m, &after).await;
        check_enforced(&m.endpoint(), "alicepw2", true, true);
    }
    tokens_cross_members(&c, "alicepw2").await;
}
