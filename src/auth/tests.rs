//! The auth store's commands, refusals, revision and persistence.

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Storage,
    store: AuthStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path()).expect("open");
    let store =
        AuthStore::open(storage.clone(), std::time::Duration::from_secs(300)).expect("auth store");
    Fixture {
        _dir: dir,
        storage,
        store,
    }
}

impl Fixture {
    fn run(&self, cmd: AuthCmd) -> Result<(), AuthError> {
        let mut b = Batch::new();
        let r = self.store.apply(&mut b, &cmd);
        self.storage.write(b, false).expect("write");
        r
    }
}

fn user(name: &str) -> AuthCmd {
    AuthCmd::UserAdd {
        name: name.to_string(),
        hashed_password: "$2b$10$hash".to_string(),
        no_password: false,
    }
}

fn role(name: &str) -> AuthCmd {
    AuthCmd::RoleAdd {
        name: name.to_string(),
    }
}

fn grant(role: &str, key: &str, end: &str) -> AuthCmd {
    AuthCmd::RoleGrantPermission {
        name: role.to_string(),
        perm_type: 0,
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
    }
}

#[test]
fn users_and_roles_with_etcds_refusals_and_a_revision_per_change() {
    let f = fixture();
    assert_eq!(f.store.revision(), 1);
    f.run(user("alice")).expect("add");
    assert_eq!(f.run(user("alice")), Err(AuthError::UserExists));
    assert_eq!(f.run(user("")), Err(AuthError::UserEmpty));
    f.run(role("ops")).expect("add role");
    assert_eq!(f.run(role("ops")), Err(AuthError::RoleExists));
    assert_eq!(f.run(role("")), Err(AuthError::RoleEmpty));
    let grant_role = |u: &str, r: &str| AuthCmd::UserGrantRole {
        user: u.to_string(),
        role: r.to_string(),
    };
    assert_eq!(
        f.run(grant_role("alice", "nope")),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(
        f.run(grant_role("bob", "ops")),
        Err(AuthError::UserNotFound)
    );
    f.run(grant_role("alice", "ops")).expect("grant");
    let rev = f.store.revision();
    f.run(grant_role("alice", "ops")).expect("grant again");
    assert_eq!(f.store.revision(), rev, "a grant that changes nothing");
    assert_eq!(f.store.user("alice").expect("user").roles, ["ops"]);
    assert_eq!(
        f.run(AuthCmd::UserRevokeRole {
            name: "alice".to_string(),
            role: "dev".to_string()
        }),
        Err(AuthError::RoleNotGranted)
    );
    // 2 users/roles added, 1 grant: revision 1 + 3.
    assert_eq!(rev, 4);
}

#[test]
fn permissions_stay_sorted_and_a_regrant_replaces_the_type() {
    let f = fixture();
    f.run(role("r")).expect("role");
    f.run(grant("r", "m", "")).expect("grant");
    f.run(grant("r", "a", "z")).expect("grant");
    f.run(AuthCmd::RoleGrantPermission {
        name: "r".to_string(),
        perm_type: 2,
        key: b"m".to_vec(),
        range_end: Vec::new(),
    })
    .expect("regrant");
    let perms: Vec<(String, String, i32)> = f
        .store
        .role("r")
        .expect("role")
        .key_permission
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.key).into_owned(),
                String::from_utf8_lossy(&p.range_end).into_owned(),
                p.perm_type,
            )
        })
        .collect();
    assert_eq!(
        perms,
        [
            ("a".to_string(), "z".to_string(), 0),
            ("m".to_string(), String::new(), 2)
        ]
    );
    let revoke = |key: &str, end: &str| AuthCmd::RoleRevokePermission {
        role: "r".to_string(),
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
    };
    assert_eq!(f.run(revoke("a", "")), Err(AuthError::PermissionNotGranted));
    f.run(revoke("a", "z")).expect("revoke");
    assert_eq!(f.store.role("r").expect("role").key_permission.len(), 1);
    assert_eq!(f.run(grant("nope", "a", "")), Err(AuthError::RoleNotFound));
}

#[test]
fn deleting_a_role_takes_it_from_users_and_the_store_survives_reload() {
    let f = fixture();
    for cmd in [user("u"), role("a"), role("b")] {
        f.run(cmd).expect("add");
    }
    for r in ["a", "b"] {
        f.run(AuthCmd::UserGrantRole {
            user: "u".to_string(),
            role: r.to_string(),
        })
        .expect("grant");
    }
    f.run(AuthCmd::RoleDelete {
        role: "a".to_string(),
    })
    .expect("delete");
    assert_eq!(f.store.user("u").expect("user").roles, ["b"]);
    assert_eq!(
        f.run(AuthCmd::RoleDelete {
            role: "a".to_string()
        }),
        Err(AuthError::RoleNotFound)
    );
    f.run(AuthCmd::UserChangePassword {
        name: "u".to_string(),
        hashed_password: "$2b$10$other".to_string(),
    })
    .expect("passwd");
    let again =
        AuthStore::open(f.storage.clone(), std::time::Duration::from_secs(300)).expect("reopen");
    assert_eq!(again.user_names(), ["u"]);
    assert_eq!(again.role_names(), ["b"]);
    assert_eq!(again.user("u").expect("user").password, b"$2b$10$other");
    assert_eq!(again.revision(), f.store.revision());
    f.run(AuthCmd::UserDelete {
        name: "u".to_string(),
    })
    .expect("delete user");
    assert_eq!(f.store.user("u"), Err(AuthError::UserNotFound));
}

#[test]
fn a_simple_token_lives_its_ttl_after_its_last_use() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path()).expect("open");
    let start = Instant::now();
    let millis = Arc::new(AtomicU64::new(0));
    let m = millis.clone();
    let store = AuthStore::open(storage.clone(), Duration::from_secs(2))
        .expect("auth store")
        .with_clock(move || start + Duration::from_millis(m.load(Ordering::Relaxed)));
    let run = |cmd: AuthCmd| {
        let mut b = Batch::new();
        let r = store.apply(&mut b, &cmd);
        storage.write(b, false).expect("write");
        r
    };
    run(role("root")).expect("role");
    run(user("root")).expect("user");
    run(AuthCmd::UserGrantRole {
        user: "root".to_string(),
        role: "root".to_string(),
    })
    .expect("grant");
    let login = |token: &str| AuthCmd::Authenticate {
        name: "root".to_string(),
        token: token.to_string(),
        revision: store.revision(),
    };
    assert_eq!(run(login("t.1")), Err(AuthError::AuthNotEnabled));
    run(AuthCmd::Enable).expect("enable");
    run(login("t.1")).expect("authenticate");
    let advance = |ms: u64| millis.fetch_add(ms, Ordering::Relaxed);
    // Each use restarts the TTL: used every 1.5 s, it outlives 2 s many times over.
    for _ in 0..5 {
        advance(1500);
        assert_eq!(store.resolve("t.1").map(|c| c.user), Ok("root".to_string()));
    }
    advance(2001);
    assert_eq!(
        store.resolve("t.1"),
        Err(AuthError::InvalidToken),
        "unused for its TTL"
    );
    assert_eq!(
        store.resolve("t.1"),
        Err(AuthError::InvalidToken),
        "and gone for good"
    );
    // Disabling authentication ends every token.
    run(login("t.2")).expect("authenticate");
    run(AuthCmd::Disable).expect("disable");
    assert_eq!(store.resolve("t.2"), Err(AuthError::InvalidToken));
}
