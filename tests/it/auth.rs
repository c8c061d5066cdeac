//! Auth management (users, roles, permissions) with authentication disabled: etcd's auth tutorial
//! through the real `etcdctl` 3.5 side by side against the real etcd, the same state on every
//! member of an oxcd cluster and across restarts, and the Auth API through the `etcd-client` crate.
//! Expected outputs, error strings, exit codes and authRevision values are etcd 3.5.1's.

use etcd_client::{
    Client, Permission, PermissionType, RoleGetResponse, RoleRevokePermissionOptions,
    UserAddOptions,
};
use oxcd::proto::etcdserverpb::{self as pb, auth_client::AuthClient};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{
    compare, error_line, etcdctl, etcdctl_stdin, normalize, step, Cluster, Kind, Member, Step, WAIT,
};

const ROLE_EXISTS: &str = "etcdserver: role name already exists";
const ROLE_EMPTY: &str = "etcdserver: role name is empty";
const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
const USER_EXISTS: &str = "etcdserver: user name already exists";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const USER_NOT_FOUND: &str = "etcdserver: user name not found";
const ROLE_NOT_GRANTED: &str = "etcdserver: role is not granted to the user";
const PERM_NOT_GRANTED: &str = "etcdserver: permission is not granted to the role";
const PERM_NOT_GIVEN: &str = "etcdserver: permission not given";

/// One etcdctl step with the outcome etcd gives it: exit code, stdout (after [`normalize`]) and
/// the `Error:` line of stderr (empty on success).
struct Case {
    step: Step,
    code: i32,
    stdout: String,
    error: String,
}

impl Case {
    /// The same step with `stdin` fed to etcdctl.
    fn stdin(mut self, stdin: &'static str) -> Case {
        self.step.stdin = Some(stdin);
        self
    }
}

/// A step that succeeds and prints `stdout`.
fn ok(args: &[&str], stdout: impl Into<String>) -> Case {
    Case {
        step: step(args),
        code: 0,
        stdout: stdout.into(),
        error: String::new(),
    }
}

/// A step the server refuses: etcdctl prints nothing on stdout, `Error: <msg>` and exits 1.
fn refused(args: &[&str], msg: &str) -> Case {
    fails(args, 1, &format!("Error: {msg}"))
}

/// A step that fails with exit `code` and the `Error:` line `error`.
fn fails(args: &[&str], code: i32, error: &str) -> Case {
    Case {
        step: step(args),
        code,
        stdout: String::new(),
        error: error.to_string(),
    }
}

/// Runs `cases` against etcd and oxcd step by step, asserts both give the same result, then that
/// the result is the one etcd 3.5 gives.
fn check(etcd: &str, oxcd: &str, cases: Vec<Case>) {
    let mut steps = Vec::new();
    let mut wants = Vec::new();
    for c in cases {
        steps.push(c.step);
        wants.push((c.code, c.stdout, c.error));
    }
    let outs = compare(etcd, oxcd, &steps);
    for ((s, (code, stdout, error)), got) in steps.iter().zip(wants).zip(outs) {
        let what = s.args.join(" ");
        assert_eq!(
            got.code,
            Some(code),
            "exit code of `etcdctl {what}`: {got:?}"
        );
        assert_eq!(normalize(&got.stdout), stdout, "stdout of `etcdctl {what}`");
        assert_eq!(error_line(&got), error, "error of `etcdctl {what}`");
    }
}

/// The response header of `etcdctl -w json` after [`normalize`], at KV revision `rev`.
fn header(rev: i64) -> String {
    format!("{{\"cluster_id\":N,\"member_id\":N,\"revision\":{rev},\"raft_term\":N}}")
}

fn auth_status(rev: u64) -> String {
    format!("Authentication Status: false\nAuthRevision: {rev}\n")
}

/// etcd's auth tutorial, management half, with auth disabled: roles, permissions (single key,
/// range, prefix, from-key), users (with a password, from stdin, without a password), role grants
/// and revokes, password changes and deletes print exactly what they print against etcd, with
/// etcd's exit codes and error strings; `role get`/`user get [--detail]`/`user list`/`role list`
/// print etcd's text and JSON, sorted as etcd sorts them; `auth status` counts every successful
/// auth change as etcd does (1 on a fresh server, +1 per change, not for re-granting a role the
/// user has, not for failures); auth changes are not KV revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_management_through_etcdctl_matches_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let (e, o) = (etcd.endpoints(), oxcd.endpoints());
    let h = header(2);
    // `role get -w json` permissions: base64 keys and range ends, permType omitted for READ (0).
    let usr_perms = concat!(
        r#"[{"key":"Lw==","range_end":"MA=="},{"key":"YQ==","range_end":"eg=="},"#,
        r#"{"permType":1,"key":"Zm9v"},{"permType":2,"key":"aw==","range_end":"AA=="}]"#
    );
    let admin_perms = r#"[{"permType":2,"key":"Lw==","range_end":"MA=="}]"#;

    // Roles and their permissions.
    check(
        &e,
        &o,
        vec![
            ok(&["user", "list"], ""),
            ok(&["role", "list"], ""),
            ok(&["auth", "status"], auth_status(1)),
            ok(&["put", "somekey", "v"], "OK\n"),
            ok(&["role", "add", "root"], "Role root created\n"),
            ok(&["role", "add", "admin"], "Role admin created\n"),
            ok(&["role", "add", "usr"], "Role usr created\n"),
            refused(&["role", "add", "usr"], ROLE_EXISTS),
            refused(&["role", "add", ""], ROLE_EMPTY),
            ok(
                &[
                    "role",
                    "grant-permission",
                    "admin",
                    "readwrite",
                    "--prefix=true",
                    "/",
                ],
                "Role admin updated\n",
            ),
            ok(
                &[
                    "role",
                    "grant-permission",
                    "usr",
                    "read",
                    "--prefix=true",
                    "/",
                ],
                "Role usr updated\n",
            ),
            ok(
                &["role", "grant-permission", "usr", "write", "foo"],
                "Role usr updated\n",
            ),
            ok(
                &["role", "grant-permission", "usr", "read", "a", "z"],
                "Role usr updated\n",
            ),
            ok(
                &[
                    "role",
                    "grant-permission",
                    "usr",
                    "readwrite",
                    "--from-key",
                    "k",
                ],
                "Role usr updated\n",
            ),
            refused(
                &["role", "grant-permission", "nosuch", "read", "x"],
                ROLE_NOT_FOUND,
            ),
            // Permissions are listed by key; a readwrite one under both headings.
            ok(
                &["role", "get", "usr"],
                "Role usr\nKV Read:\n\t[/, 0) (prefix /)\n\t[a, z)\n\t[k, <open ended>\n\
                 KV Write:\n\tfoo\n\t[k, <open ended>\n",
            ),
            ok(
                &["role", "get", "usr", "-w", "json"],
                format!("{{\"header\":{h},\"perm\":{usr_perms}}}\n"),
            ),
            ok(
                &["role", "get", "admin"],
                "Role admin\nKV Read:\n\t[/, 0) (prefix /)\nKV Write:\n\t[/, 0) (prefix /)\n",
            ),
            ok(&["role", "get", "root"], "Role root\nKV Read:\nKV Write:\n"),
            ok(
                &["role", "get", "root", "-w", "json"],
                format!("{{\"header\":{h}}}\n"),
            ),
            refused(&["role", "get", "nosuch"], ROLE_NOT_FOUND),
            ok(&["role", "list"], "admin\nroot\nusr\n"),
            ok(
                &["role", "list", "-w", "json"],
                format!("{{\"header\":{h},\"roles\":[\"admin\",\"root\",\"usr\"]}}\n"),
            ),
            ok(&["auth", "status"], auth_status(9)),
        ],
    );

    // Users and role grants.
    check(
        &e,
        &o,
        vec![
            ok(&["user", "add", "root:123456"], "User root created\n"),
            ok(&["user", "add", "admin:123456"], "User admin created\n"),
            ok(&["user", "add", "usr:123456"], "User usr created\n"),
            refused(&["user", "add", "usr:123456"], USER_EXISTS),
            ok(
                &["user", "add", "--no-password", "nopw"],
                "User nopw created\n",
            ),
            ok(
                &["user", "add", "Zed", "--interactive=false"],
                "User Zed created\n",
            )
            .stdin("secret\n"),
            // etcdctl refuses an empty user name itself (bad arguments), before any request.
            fails(
                &["user", "add", ":abc"],
                128,
                "Error: empty user name is not allowed",
            ),
            ok(&["user", "get", "nopw"], "User: nopw\nRoles:\n"),
            ok(
                &["user", "grant-role", "root", "root"],
                "Role root is granted to user root\n",
            ),
            ok(
                &["user", "grant-role", "admin", "admin"],
                "Role admin is granted to user admin\n",
            ),
            ok(
                &["user", "grant-role", "usr", "usr"],
                "Role usr is granted to user usr\n",
            ),
            // Granting a role the user already has succeeds and changes nothing.
            ok(
                &["user", "grant-role", "usr", "usr"],
                "Role usr is granted to user usr\n",
            ),
            ok(&["auth", "status"], auth_status(17)),
            ok(
                &["user", "grant-role", "usr", "admin"],
                "Role admin is granted to user usr\n",
            ),
            refused(&["user", "grant-role", "usr", "nosuch"], ROLE_NOT_FOUND),
            refused(&["user", "grant-role", "nosuch", "usr"], USER_NOT_FOUND),
            refused(&["user", "grant-role", "nosuch", "nosuch"], USER_NOT_FOUND),
            ok(&["user", "get", "usr"], "User: usr\nRoles: admin usr\n"),
            ok(
                &["user", "get", "usr", "--detail"],
                "User: usr\n\
                 \nRole admin\nKV Read:\n\t[/, 0) (prefix /)\nKV Write:\n\t[/, 0) (prefix /)\n\
                 \nRole usr\nKV Read:\n\t[/, 0) (prefix /)\n\t[a, z)\n\t[k, <open ended>\n\
                 KV Write:\n\tfoo\n\t[k, <open ended>\n",
            ),
            ok(
                &["user", "get", "usr", "-w", "json"],
                format!("{{\"header\":{h},\"roles\":[\"admin\",\"usr\"]}}\n"),
            ),
            ok(
                &["user", "get", "usr", "--detail", "-w", "json"],
                format!(
                    "User: usr\n\n{{\"header\":{h},\"perm\":{admin_perms}}}\n\n\
                     {{\"header\":{h},\"perm\":{usr_perms}}}\n"
                ),
            ),
            ok(&["user", "get", "nopw", "--detail"], "User: nopw\n"),
            ok(
                &["user", "get", "nopw", "-w", "json"],
                format!("{{\"header\":{h}}}\n"),
            ),
            refused(&["user", "get", "nosuch"], USER_NOT_FOUND),
            refused(&["user", "get", "nosuch", "--detail"], USER_NOT_FOUND),
            // Byte order: upper case first.
            ok(&["user", "list"], "Zed\nadmin\nnopw\nroot\nusr\n"),
            ok(
                &["user", "list", "-w", "json"],
                format!(
                    "{{\"header\":{h},\"users\":[\"Zed\",\"admin\",\"nopw\",\"root\",\"usr\"]}}\n"
                ),
            ),
            ok(&["auth", "status"], auth_status(18)),
        ],
    );

    // Revokes need the exact role, key and range end that were granted.
    check(
        &e,
        &o,
        vec![
            ok(
                &["user", "revoke-role", "usr", "usr"],
                "Role usr is revoked from user usr\n",
            ),
            refused(&["user", "revoke-role", "usr", "usr"], ROLE_NOT_GRANTED),
            refused(&["user", "revoke-role", "usr", "nosuch"], ROLE_NOT_GRANTED),
            refused(&["user", "revoke-role", "nosuch", "usr"], USER_NOT_FOUND),
            ok(
                &["role", "revoke-permission", "usr", "foo"],
                "Permission of key foo is revoked from role usr\n",
            ),
            refused(
                &["role", "revoke-permission", "usr", "foo"],
                PERM_NOT_GRANTED,
            ),
            refused(&["role", "revoke-permission", "usr", "/"], PERM_NOT_GRANTED),
            ok(
                &["role", "revoke-permission", "usr", "--prefix=true", "/"],
                "Permission of range [/, 0) is revoked from role usr\n",
            ),
            refused(
                &["role", "revoke-permission", "usr", "a", "y"],
                PERM_NOT_GRANTED,
            ),
            ok(
                &["role", "revoke-permission", "usr", "a", "z"],
                "Permission of range [a, z) is revoked from role usr\n",
            ),
            refused(&["role", "revoke-permission", "usr", "k"], PERM_NOT_GRANTED),
            ok(
                &["role", "revoke-permission", "usr", "--from-key", "k"],
                "Permission of range [k, <open ended> is revoked from role usr\n",
            ),
            refused(
                &["role", "revoke-permission", "nosuch", "foo"],
                ROLE_NOT_FOUND,
            ),
            ok(&["role", "get", "usr"], "Role usr\nKV Read:\nKV Write:\n"),
            // Granting the same key and range again replaces the permission type.
            ok(
                &["role", "grant-permission", "usr", "read", "foo"],
                "Role usr updated\n",
            ),
            ok(
                &["role", "grant-permission", "usr", "write", "foo"],
                "Role usr updated\n",
            ),
            ok(
                &["role", "get", "usr"],
                "Role usr\nKV Read:\nKV Write:\n\tfoo\n",
            ),
            // Sorted by key whatever the grant order.
            ok(
                &["role", "grant-permission", "usr", "read", "b"],
                "Role usr updated\n",
            ),
            ok(
                &[
                    "role",
                    "grant-permission",
                    "usr",
                    "read",
                    "--prefix=true",
                    "a",
                ],
                "Role usr updated\n",
            ),
            ok(
                &["role", "get", "usr"],
                "Role usr\nKV Read:\n\t[a, b) (prefix a)\n\tb\nKV Write:\n\tfoo\n",
            ),
            ok(
                &["role", "get", "usr", "-w", "json"],
                format!(
                    "{{\"header\":{h},\"perm\":[{{\"key\":\"YQ==\",\"range_end\":\"Yg==\"}},\
                     {{\"key\":\"Yg==\"}},{{\"permType\":1,\"key\":\"Zm9v\"}}]}}\n"
                ),
            ),
            ok(&["auth", "status"], auth_status(27)),
        ],
    );

    // Passwords and deletes; deleting a role revokes it from every user.
    check(
        &e,
        &o,
        vec![
            ok(
                &["user", "passwd", "usr", "--interactive=false"],
                "Password updated\n",
            )
            .stdin("newpass\n"),
            refused(
                &["user", "passwd", "nosuch", "--interactive=false"],
                USER_NOT_FOUND,
            )
            .stdin("x\n"),
            ok(
                &["user", "passwd", "nopw", "--interactive=false"],
                "Password updated\n",
            )
            .stdin("pw\n"),
            ok(&["user", "delete", "admin"], "User admin deleted\n"),
            refused(&["user", "delete", "admin"], USER_NOT_FOUND),
            ok(&["role", "delete", "admin"], "Role admin deleted\n"),
            refused(&["role", "delete", "admin"], ROLE_NOT_FOUND),
            ok(&["user", "get", "usr"], "User: usr\nRoles:\n"),
            ok(&["user", "list"], "Zed\nnopw\nroot\nusr\n"),
            ok(&["role", "list"], "root\nusr\n"),
            ok(&["auth", "status"], auth_status(31)),
            ok(
                &["auth", "status", "-w", "json"],
                format!("{{\"header\":{h},\"authRevision\":31}}\n"),
            ),
            ok(&["get", "somekey"], "somekey\nv\n"),
        ],
    );
}

/// Every read command a user would run to see the auth state, through `ep`: stdout, or the
/// `Error:` line if the command failed.
fn auth_views(ep: &str, role: &str, user: &str) -> Vec<String> {
    let reads: [&[&str]; 5] = [
        &["user", "list"],
        &["role", "list"],
        &["role", "get", role],
        &["user", "get", user],
        &["auth", "status"],
    ];
    reads
        .iter()
        .map(|args| {
            let c = etcdctl(ep, args);
            if c.ok {
                c.stdout
            } else {
                format!("{} failed: {}", args.join(" "), error_line(&c))
            }
        })
        .collect()
}

/// Runs `etcdctl args` through `ep` and asserts it prints `stdout`.
fn run_ok(ep: &str, args: &[&str], stdin: Option<&str>, stdout: &str) {
    let c = etcdctl_stdin(ep, args, stdin);
    assert!(c.ok, "etcdctl {} via {ep}: {c:?}", args.join(" "));
    assert_eq!(c.stdout, stdout, "etcdctl {}", args.join(" "));
}

/// Asserts that every running member shows `want` right away (auth reads are linearizable in
/// etcd: they go through the log, `auth status` too).
fn assert_views_everywhere(c: &Cluster, want: &[String]) {
    for m in c.members.iter().filter(|m| m.running()) {
        assert_eq!(
            auth_views(&m.endpoint(), "reader", "alice"),
            want,
            "auth state through member {}",
            m.spec.name
        );
    }
}

/// Waits until `m` (just restarted) answers the auth reads with `want`; a restarted member may
/// refuse reads until it has a leader, and must then have caught up.
async fn wait_views(m: &Member, want: &[String]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = auth_views(&m.endpoint(), "reader", "alice");
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {} did not show the auth state within {WAIT:?}: {got:?}, want {want:?}",
            m.spec.name
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Users, roles and permissions created through one member of a 3-member oxcd cluster read the
/// same (`user list`, `role list`, `role get`, `user get`, `auth status`) through every member;
/// changes made while a member is down reach it when it restarts; everything, the authRevision
/// included, survives a restart of the whole cluster, and the authRevision continues from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_survives_restart_and_is_identical_on_every_member() {
    let mut c = Cluster::start(3).await;
    let ep = c.members[0].endpoint();

    run_ok(
        &ep,
        &["role", "add", "reader"],
        None,
        "Role reader created\n",
    );
    run_ok(
        &ep,
        &["role", "add", "writer"],
        None,
        "Role writer created\n",
    );
    run_ok(
        &ep,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "--prefix=true",
            "/app/",
        ],
        None,
        "Role reader updated\n",
    );
    run_ok(
        &ep,
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "app1",
            "app9",
        ],
        None,
        "Role writer updated\n",
    );
    run_ok(
        &ep,
        &["user", "add", "alice:pw"],
        None,
        "User alice created\n",
    );
    run_ok(
        &ep,
        &["user", "add", "--no-password", "bob"],
        None,
        "User bob created\n",
    );
    for (user, role) in [("alice", "reader"), ("alice", "writer"), ("bob", "reader")] {
        run_ok(
            &ep,
            &["user", "grant-role", user, role],
            None,
            &format!("Role {role} is granted to user {user}\n"),
        );
    }
    let before = strings(&[
        "alice\nbob\n",
        "reader\nwriter\n",
        "Role reader\nKV Read:\n\t[/app/, /app0) (prefix /app/)\nKV Write:\n",
        "User: alice\nRoles: reader writer\n",
        &auth_status(10),
    ]);
    assert_views_everywhere(&c, &before);
    run_ok(
        &c.members[2].endpoint(),
        &["role", "get", "writer"],
        None,
        "Role writer\nKV Read:\n\t[app1, app9)\nKV Write:\n\t[app1, app9)\n",
    );

    // Changes while member 3 is down.
    assert!(c.members[2].stop().await, "clean exit on SIGTERM");
    c.wait_leader().await;
    run_ok(
        &ep,
        &["user", "add", "carol:pw"],
        None,
        "User carol created\n",
    );
    run_ok(
        &ep,
        &["user", "passwd", "bob", "--interactive=false"],
        Some("secret\n"),
        "Password updated\n",
    );
    run_ok(
        &ep,
        &["user", "revoke-role", "alice", "writer"],
        None,
        "Role writer is revoked from user alice\n",
    );
    run_ok(
        &ep,
        &[
            "role",
            "revoke-permission",
            "reader",
            "--prefix=true",
            "/app/",
        ],
        None,
        "Permission of range [/app/, /app0) is revoked from role reader\n",
    );
    run_ok(
        &ep,
        &["role", "grant-permission", "reader", "write", "/app/x"],
        None,
        "Role reader updated\n",
    );
    run_ok(
        &ep,
        &["role", "delete", "writer"],
        None,
        "Role writer deleted\n",
    );
    let after = strings(&[
        "alice\nbob\ncarol\n",
        "reader\n",
        "Role reader\nKV Read:\nKV Write:\n\t/app/x\n",
        "User: alice\nRoles: reader\n",
        &auth_status(16),
    ]);
    assert_views_everywhere(&c, &after);

    c.members[2].start();
    c.members[2].wait_serving().await;
    wait_views(&c.members[2], &after).await;
    assert_views_everywhere(&c, &after);

    // The whole cluster down and up again: the state comes back from disk. (Once quorum is gone
    // the last members may not exit cleanly: what is asserted is what they show afterwards.)
    for m in c.members.iter_mut() {
        m.stop().await;
    }
    for m in c.members.iter_mut() {
        m.start();
    }
    for m in &c.members {
        m.wait_serving().await;
    }
    c.wait_leader().await;
    for m in &c.members {
        wait_views(m, &after).await;
    }
    assert_views_everywhere(&c, &after);

    // The authRevision continues from the restored one.
    run_ok(
        &c.members[1].endpoint(),
        &["user", "add", "--no-password", "dave"],
        None,
        "User dave created\n",
    );
    let mut last = after;
    last[0] = "alice\nbob\ncarol\ndave\n".to_string();
    last[4] = auth_status(17);
    assert_views_everywhere(&c, &last);
}

const READ: i32 = PermissionType::Read as i32;
const WRITE: i32 = PermissionType::Write as i32;
const READWRITE: i32 = PermissionType::Readwrite as i32;

/// The gRPC code and message of a failed call.
fn grpc_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

fn fp(msg: &str) -> (Code, String) {
    (Code::FailedPrecondition, msg.to_string())
}

fn inval(msg: &str) -> (Code, String) {
    (Code::InvalidArgument, msg.to_string())
}

/// A role's permissions as (type, key, range end).
fn perms(r: &RoleGetResponse) -> Vec<(i32, String, String)> {
    r.permissions()
        .iter()
        .map(|p| {
            (
                p.get_type(),
                String::from_utf8_lossy(p.key()).into_owned(),
                String::from_utf8_lossy(p.range_end()).into_owned(),
            )
        })
        .collect()
}

fn perm(t: i32, key: &str, range_end: &str) -> (i32, String, String) {
    (t, key.to_string(), range_end.to_string())
}

/// (enabled, authRevision, header revision) through the raw AuthStatus call (`etcd-client` 0.17
/// has no method for it).
async fn status(raw: &mut AuthClient<Channel>) -> (bool, u64, i64) {
    let r = raw
        .auth_status(pb::AuthStatusRequest {})
        .await
        .expect("auth status")
        .into_inner();
    let rev = r.header.as_ref().map_or(0, |h| h.revision);
    (r.enabled, r.auth_revision, rev)
}

async fn users(c: &mut Client) -> Vec<String> {
    c.user_list().await.expect("user list").users().to_vec()
}

async fn roles(c: &mut Client) -> Vec<String> {
    c.role_list().await.expect("role list").roles().to_vec()
}

async fn user_roles(c: &mut Client, user: &str) -> Vec<String> {
    c.user_get(user).await.expect("user get").roles().to_vec()
}

/// The Auth API script of [`auth_api_through_etcd_client_matches_etcd`], with its expected
/// results, against one server.
async fn auth_api_script(m: &Member) {
    let who = format!("{:?}", m.kind);
    let mut c = m.client().await;
    let mut raw = AuthClient::new(m.channel().await);

    // A fresh server: no users, no roles, auth disabled at authRevision 1.
    assert!(users(&mut c).await.is_empty(), "{who}");
    assert!(roles(&mut c).await.is_empty(), "{who}");
    let (enabled, auth_rev, _) = status(&mut raw).await;
    assert_eq!((enabled, auth_rev), (false, 1), "{who}");
    let base = c
        .put("k", "v", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();

    // Roles. Auth answers carry the KV revision: auth changes do not create KV revisions.
    for r in ["writer", "reader", "Admin"] {
        let resp = c.role_add(r).await.expect("role add");
        let h = resp.header().expect("header");
        assert_eq!(h.revision(), base, "{who}: role add header revision");
        assert!(h.member_id() != 0 && h.cluster_id() != 0, "{who}: {h:?}");
    }
    assert_eq!(
        grpc_err(c.role_add("reader").await),
        fp(ROLE_EXISTS),
        "{who}"
    );
    assert_eq!(grpc_err(c.role_add("").await), inval(ROLE_EMPTY), "{who}");
    assert_eq!(roles(&mut c).await, ["Admin", "reader", "writer"], "{who}");

    // Permissions: a prefix becomes [key, key+1), from-key and all keys an end of "\0".
    let grants = [
        ("reader", Permission::read("/").with_prefix()),
        ("reader", Permission::write("foo")),
        ("reader", Permission::read_write("k").with_from_key()),
        ("reader", Permission::read("a").with_range_end("z")),
        ("Admin", Permission::read_write("").with_all_keys()),
    ];
    for (role, p) in grants {
        let r = c.role_grant_permission(role, p).await.expect("grant");
        assert_eq!(r.header().expect("header").revision(), base, "{who}");
    }
    assert_eq!(
        grpc_err(
            c.role_grant_permission("nosuch", Permission::read("x"))
                .await
        ),
        fp(ROLE_NOT_FOUND),
        "{who}"
    );
    let e = raw
        .role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "reader".into(),
            perm: None,
        })
        .await
        .expect_err("a grant without a permission");
    assert_eq!(
        (e.code(), e.message().to_string()),
        inval(PERM_NOT_GIVEN),
        "{who}"
    );
    let r = c.role_get("reader").await.expect("role get");
    assert_eq!(r.header().expect("header").revision(), base, "{who}");
    assert_eq!(
        perms(&r),
        [
            perm(READ, "/", "0"),
            perm(READ, "a", "z"),
            perm(WRITE, "foo", ""),
            perm(READWRITE, "k", "\0"),
        ],
        "{who}: permissions sorted by key"
    );
    let p = r.permissions();
    assert!(p[0].is_prefix() && !p[0].is_from_key(), "{who}: {:?}", p[0]);
    assert!(
        !p[1].is_prefix() && !p[1].is_from_key(),
        "{who}: {:?}",
        p[1]
    );
    assert!(p[3].is_from_key() && !p[3].is_prefix(), "{who}: {:?}", p[3]);
    let r = c.role_get("Admin").await.expect("role get");
    assert_eq!(perms(&r), [perm(READWRITE, "\0", "\0")], "{who}");
    assert!(
        perms(&c.role_get("writer").await.expect("role get")).is_empty(),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.role_get("nosuch").await),
        fp(ROLE_NOT_FOUND),
        "{who}"
    );
    assert_eq!(status(&mut raw).await, (false, 9, base), "{who}");
    // The same key and range end again replaces the type.
    c.role_grant_permission("writer", Permission::read("w"))
        .await
        .expect("grant");
    c.role_grant_permission("writer", Permission::write("w"))
        .await
        .expect("grant");
    let r = c.role_get("writer").await.expect("role get");
    assert_eq!(perms(&r), [perm(WRITE, "w", "")], "{who}");

    // Users: with a password, without one, with an empty one, without the options field.
    for (name, pw, opts) in [
        ("carol", "pw", None),
        ("alice", "pw", None),
        ("Zed", "", Some(UserAddOptions::new().with_no_pwd())),
        ("bob", "", None),
    ] {
        let r = c.user_add(name, pw, opts).await.expect("user add");
        assert_eq!(r.header().expect("header").revision(), base, "{who}");
    }
    raw.user_add(pb::AuthUserAddRequest {
        name: "dora".into(),
        password: "pw".into(),
        options: None,
        ..Default::default()
    })
    .await
    .expect("user add without options");
    assert_eq!(
        grpc_err(c.user_add("alice", "x", None).await),
        fp(USER_EXISTS),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.user_add("", "x", None).await),
        inval(USER_EMPTY),
        "{who}"
    );
    assert_eq!(
        grpc_err(
            c.user_add("", "", Some(UserAddOptions::new().with_no_pwd()))
                .await
        ),
        inval(USER_EMPTY),
        "{who}"
    );
    assert_eq!(
        users(&mut c).await,
        ["Zed", "alice", "bob", "carol", "dora"],
        "{who}: users in byte order"
    );
    assert!(user_roles(&mut c, "Zed").await.is_empty(), "{who}");

    // Role grants: a user's roles are kept sorted; re-granting is a no-op.
    for role in ["writer", "reader", "Admin"] {
        c.user_grant_role("alice", role).await.expect("grant role");
    }
    assert_eq!(
        user_roles(&mut c, "alice").await,
        ["Admin", "reader", "writer"],
        "{who}"
    );
    assert_eq!(status(&mut raw).await.1, 19, "{who}");
    c.user_grant_role("alice", "reader")
        .await
        .expect("grant a granted role");
    assert_eq!(status(&mut raw).await.1, 19, "{who}: re-grant is no change");
    assert_eq!(
        grpc_err(c.user_grant_role("nosuch", "reader").await),
        fp(USER_NOT_FOUND),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.user_grant_role("alice", "nosuch").await),
        fp(ROLE_NOT_FOUND),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.user_grant_role("nosuch", "nosuch").await),
        fp(USER_NOT_FOUND),
        "{who}: the user is checked first"
    );
    assert_eq!(
        grpc_err(c.user_get("nosuch").await),
        fp(USER_NOT_FOUND),
        "{who}"
    );

    // Revokes.
    c.user_revoke_role("alice", "reader").await.expect("revoke");
    assert_eq!(
        grpc_err(c.user_revoke_role("alice", "reader").await),
        fp(ROLE_NOT_GRANTED),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.user_revoke_role("nosuch", "reader").await),
        fp(USER_NOT_FOUND),
        "{who}"
    );
    assert_eq!(
        grpc_err(c.role_revoke_permission("reader", "/", None).await),
        fp(PERM_NOT_GRANTED),
        "{who}: a revoke names the exact range"
    );
    let opts = RoleRevokePermissionOptions::new;
    c.role_revoke_permission("reader", "/", Some(opts().with_prefix()))
        .await
        .expect("revoke prefix");
    c.role_revoke_permission("reader", "k", Some(opts().with_from_key()))
        .await
        .expect("revoke from-key");
    assert_eq!(
        grpc_err(
            c.role_revoke_permission("reader", "a", Some(opts().with_range_end("y")))
                .await
        ),
        fp(PERM_NOT_GRANTED),
        "{who}"
    );
    c.role_revoke_permission("reader", "a", Some(opts().with_range_end("z")))
        .await
        .expect("revoke range");
    assert_eq!(
        grpc_err(c.role_revoke_permission("nosuch", "foo", None).await),
        fp(ROLE_NOT_FOUND),
        "{who}"
    );
    let r = c.role_get("reader").await.expect("role get");
    assert_eq!(perms(&r), [perm(WRITE, "foo", "")], "{who}");

    // Passwords and deletes.
    c.user_change_password("alice", "new")
        .await
        .expect("change password");
    c.user_change_password("Zed", "pw")
        .await
        .expect("give a no-password user a password");
    assert_eq!(
        grpc_err(c.user_change_password("nosuch", "x").await),
        fp(USER_NOT_FOUND),
        "{who}"
    );
    c.user_delete("bob").await.expect("user delete");
    assert_eq!(
        grpc_err(c.user_delete("bob").await),
        fp(USER_NOT_FOUND),
        "{who}"
    );
    c.role_delete("writer").await.expect("role delete");
    assert_eq!(
        grpc_err(c.role_delete("writer").await),
        fp(ROLE_NOT_FOUND),
        "{who}"
    );
    assert_eq!(
        user_roles(&mut c, "alice").await,
        ["Admin"],
        "{who}: a deleted role is revoked from its users"
    );
    assert_eq!(
        users(&mut c).await,
        ["Zed", "alice", "carol", "dora"],
        "{who}"
    );
    assert_eq!(roles(&mut c).await, ["Admin", "reader"], "{who}");
    assert_eq!(status(&mut raw).await, (false, 27, base), "{who}");
    let g = c.get("k", None).await.expect("get");
    assert_eq!(g.header().expect("header").revision(), base, "{who}");
}

/// The Auth API through `etcd-client` (and raw gRPC for AuthStatus and a grant without a
/// permission) gives the same answers from oxcd as from etcd: users with and without passwords,
/// read/write/readwrite permissions over a key, a range, a prefix (range end `key+1`), from a key
/// and over all keys (range end "\0"), permissions sorted by key, users, roles and a user's roles
/// sorted by bytes, etcd's gRPC codes and messages for every refusal, the authRevision after each
/// phase, and the KV revision in every auth answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_api_through_etcd_client_matches_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    auth_api_script(&etcd.members[0]).await;
    auth_api_script(&oxcd.members[0]).await;
}
