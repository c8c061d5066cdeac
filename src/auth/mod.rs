//! The auth store: users (with bcrypt password hashes), roles, and the key-range permissions
//! roles grant, plus whether authentication is enabled and the auth revision.
//!
//! Invariants:
//! - The store changes only while a command is applied, and its rows in the `auth` column family
//!   go into that command's batch; every member holds the same store. Every change that succeeds
//!   raises the auth revision by one (tokens minted at an older revision are stale); a request
//!   that changes nothing (granting a role the user already has) leaves it alone, as etcd does.
//! - Passwords are hashed by the proposer (bcrypt is salted, so hashing is not deterministic);
//!   the store only ever sees and keeps the hash.
//! - Refusals are [`AuthError`] values with etcd's texts, decided before anything is written.
//! - A role's permissions are kept sorted by key (in grant order among equal keys, as etcd's); a
//!   grant whose key and range end match the first permission with that key replaces its type.

pub mod jwt;
pub mod perm;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prost::Message;

pub use perm::Access;

use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::storage::{Batch, Cf, Storage, StorageError};

/// The role (and user) that bypasses every permission check.
pub const ROOT: &str = "root";

/// The prefix of a user's row in the `auth` column family (then the name; the value is
/// `authpb.User`).
pub const USER_PREFIX: &[u8] = b"user/";
/// The prefix of a role's row (then the name; the value is `authpb.Role`).
pub const ROLE_PREFIX: &[u8] = b"role/";
/// The row of the auth-enabled flag: one byte, 1 when enabled.
pub const KEY_ENABLED: &[u8] = b"enabled";
/// The row of the auth revision: a big-endian u64.
pub const KEY_REVISION: &[u8] = b"revision";

/// A deterministic refusal of an auth command or query, with etcd's text (without the
/// `etcdserver: ` prefix, which the server adds).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum AuthError {
    /// An empty user name.
    #[error("user name is empty")]
    UserEmpty,
    /// A user of that name exists.
    #[error("user name already exists")]
    UserExists,
    /// No user of that name.
    #[error("user name not found")]
    UserNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// A role of that name exists.
    #[error("role name already exists")]
    RoleExists,
    /// No role of that name.
    #[error("role name not found")]
    RoleNotFound,
    /// The user does not have the role.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// The role has no such permission.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// A change that would lock root out while authentication is on.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// Enabling authentication without a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// Enabling authentication while `root` lacks the `root` role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// Authenticate while authentication is off.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// A wrong user name or password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A token this member does not know (expired, or never issued).
    #[error("invalid auth token")]
    InvalidToken,
    /// A token minted before the last change to users, roles or permissions.
    #[error("revision of auth store is old")]
    OldRevision,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
}

/// Who is calling: the user a token names and the auth revision the token was minted at.
/// An empty user means the request carried no token.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    /// The user name.
    pub user: String,
    /// The auth revision the token was minted at.
    pub revision: u64,
}

/// A snapshot of the whole store, for reads.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// The auth store of one member.
pub struct AuthStore {
    storage: Storage,
    state: RwLock<State>,
    /// Simple tokens this member knows: token -> (user, expiry). Volatile, as
    /// etcd's: a restart forgets them and clients authenticate again.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    token_ttl: Duration,
    /// JWT tokens instead of simple ones, when configured.
    jwt: Option<jwt::Jwt>,
    /// The monotonic clock simple tokens expire by (tests move it by hand).
    clock: Clock,
}

/// A monotonic time source.
type Clock = std::sync::Arc<dyn Fn() -> Instant + Send + Sync>;

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.read();
        f.debug_struct("AuthStore")
            .field("enabled", &st.enabled)
            .field("revision", &st.revision)
            .field("users", &st.users.len())
            .field("roles", &st.roles.len())
            .field("jwt", &self.jwt)
            .finish()
    }
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt { cf: "auth", detail }
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

impl AuthStore {
    /// Opens the store kept in `storage`; simple tokens live `token_ttl` after their last use.
    pub fn open(storage: Storage, token_ttl: Duration) -> Result<AuthStore, StorageError> {
        let store = AuthStore {
            storage,
            state: RwLock::new(State::default()),
            tokens: Mutex::new(HashMap::new()),
            token_ttl,
            jwt: None,
            clock: std::sync::Arc::new(Instant::now),
        };
        store.load()?;
        Ok(store)
    }

    /// Replaces the in-memory store with what storage holds (at start-up and after a snapshot
    /// is installed).
    pub fn load(&self) -> Result<(), StorageError> {
        let mut st = State {
            revision: 1,
            ..State::default()
        };
        self.storage.scan(Cf::Auth, &[], None, |k, v| {
            if let Some(name) = k.strip_prefix(USER_PREFIX) {
                let u = User::decode(v).map_err(|e| corrupt(e.to_string()))?;
                st.users
                    .insert(String::from_utf8_lossy(name).into_owned(), u);
            } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
                let r = Role::decode(v).map_err(|e| corrupt(e.to_string()))?;
                st.roles
                    .insert(String::from_utf8_lossy(name).into_owned(), r);
            } else if k == KEY_ENABLED {
                st.enabled = v.first() == Some(&1);
            } else if k == KEY_REVISION {
                let b: [u8; 8] = v
                    .try_into()
                    .map_err(|_| corrupt("auth revision is not 8 bytes".to_string()))?;
                st.revision = u64::from_be_bytes(b);
            }
            Ok(true)
        })?;
        *self.state.write() = st;
        // A snapshot may skip the entries that would have ended tokens (password changes,
        // deletions, `auth disable`): forget them all; clients authenticate again.
        self.tokens.lock().clear();
        Ok(())
    }

    /// Whether authentication is enabled.
    pub fn enabled(&self) -> bool {
        self.state.read().enabled
    }

    /// The auth revision.
    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// The user `name`.
    pub fn user(&self, name: &str) -> Result<User, AuthError> {
        self.state
            .read()
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)
    }

    /// The role `name`.
    pub fn role(&self, name: &str) -> Result<Role, AuthError> {
        self.state
            .read()
            .roles
            .get(name)
            .cloned()
            .ok_or(AuthError::RoleNotFound)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    /// Records simple token `token` for `name` if the store is still at the `revision` its
    /// password was checked at (apply only: every member learns it). Expired tokens are dropped
    /// on the way.
    fn assign_token(
        &self,
        st: &State,
        name: &str,
        token: &str,
        revision: u64,
    ) -> Result<(), AuthError> {
        if !st.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        if st.revision != revision {
            // The password was checked against an older store (it may have changed since).
            return Err(AuthError::OldRevision);
        }
        if !st.users.contains_key(name) {
            return Err(AuthError::AuthFailed);
        }
        let now = (self.clock)();
        let mut tokens = self.tokens.lock();
        tokens.retain(|_, (_, expiry)| *expiry > now);
        tokens.insert(token.to_string(), (name.to_string(), now + self.token_ttl));
        Ok(())
    }

    /// Uses `clock` for simple-token expiry instead of the system's monotonic clock.
    pub fn with_clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> AuthStore {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Uses JWT tokens (`--auth-token jwt,...`) instead of simple ones.
    pub fn with_jwt(mut self, jwt: jwt::Jwt) -> AuthStore {
        self.jwt = Some(jwt);
        self
    }

    /// A JWT for `user` at auth revision `revision` (the one its password was checked at), when
    /// JWT tokens are configured.
    pub fn mint_jwt(&self, user: &str, revision: u64) -> Option<Result<String, AuthError>> {
        self.jwt.as_ref().map(|j| j.mint(user, revision))
    }

    /// Drops the simple tokens of `name` (its password changed, or it was deleted).
    fn invalidate_user(&self, name: &str) {
        self.tokens.lock().retain(|_, (user, _)| user != name);
    }

    /// The caller a token names: a JWT's signature and expiry are checked, and it carries the
    /// auth revision it was minted at (so it goes stale on any auth change); a simple token
    /// must be known to this member and not expired (its expiry is refreshed), and is checked
    /// against the store as it is now, as etcd's.
    pub fn resolve(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some(j) = &self.jwt {
            return j.verify(token);
        }
        let now = (self.clock)();
        let revision = self.revision();
        let mut tokens = self.tokens.lock();
        match tokens.get_mut(token) {
            Some((user, expiry)) if *expiry > now => {
                *expiry = now + self.token_ttl;
                Ok(Caller {
                    user: user.clone(),
                    revision,
                })
            }
            Some(_) => {
                tokens.remove(token);
                Err(AuthError::InvalidToken)
            }
            None => Err(AuthError::InvalidToken),
        }
    }

    /// The stored password hash of `name` (if the user exists and has a password) and the auth
    /// revision it was read at.
    pub fn password_hash(&self, name: &str) -> (Option<String>, u64) {
        let st = self.state.read();
        let hash = st.users.get(name).and_then(|u| {
            if u.options.as_ref().is_some_and(|o| o.no_password) || u.password.is_empty() {
                None
            } else {
                String::from_utf8(u.password.clone()).ok()
            }
        });
        (hash, st.revision)
    }

    fn checked_user<'s>(&self, st: &'s State, caller: &Caller) -> Result<&'s User, AuthError> {
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if caller.revision < st.revision {
            return Err(AuthError::OldRevision);
        }
        st.users
            .get(&caller.user)
            .ok_or(AuthError::PermissionDenied)
    }

    /// Whether `caller` may `access` every key of `[key, range_end)`. Always allowed while
    /// authentication is off; the `root` role may do anything.
    pub fn check(
        &self,
        caller: &Caller,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let user = self.checked_user(&st, caller)?;
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let perms = user
            .roles
            .iter()
            .filter_map(|r| st.roles.get(r))
            .flat_map(|r| r.key_permission.iter());
        if perm::covers(perms, access, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `caller` may administer (has the `root` role). Always allowed while
    /// authentication is off.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let user = self.checked_user(&st, caller)?;
        if user.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `by` may administer as the store is now (apply only: the check a request passed
    /// must still hold when its change applies). Always allowed while authentication is off.
    pub fn admin_at_apply(&self, by: Option<&str>) -> Result<(), AuthError> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        let user = by.ok_or(AuthError::UserEmpty)?;
        let u = st.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if u.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `caller`'s token is valid for the store as it is now (any user).
    pub fn check_caller(&self, caller: &Caller) -> Result<(), AuthError> {
        let st = self.state.read();
        if !st.enabled {
            return Ok(());
        }
        self.checked_user(&st, caller).map(|_| ())
    }

    /// Applies one command to `batch` (apply only). Every check runs before the first change.
    pub fn apply(&self, batch: &mut Batch, cmd: &AuthCmd) -> Result<(), AuthError> {
        if let AuthCmd::Authenticate {
            name,
            token,
            revision,
        } = cmd
        {
            let st = self.state.read();
            return self.assign_token(&st, name, token, *revision);
        }
        let mut st = self.state.write();
        let changed = match cmd {
            AuthCmd::Authenticate { .. } => false,
            AuthCmd::Enable => {
                let root = st.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if root
                    .roles
                    .binary_search_by(|r| r.as_str().cmp(ROOT))
                    .is_err()
                {
                    return Err(AuthError::RootRoleNotExist);
                }
                if !st.enabled {
                    st.enabled = true;
                    batch.put(Cf::Auth, KEY_ENABLED.to_vec(), vec![1]);
                }
                // As etcd: enabling does not move the auth revision (disabling does).
                false
            }
            AuthCmd::Disable => {
                if st.enabled {
                    st.enabled = false;
                    batch.put(Cf::Auth, KEY_ENABLED.to_vec(), vec![0]);
                    // Every simple token dies with authentication, as etcd's.
                    self.tokens.lock().clear();
                    true
                } else {
                    false
                }
            }
            AuthCmd::UserAdd {
                name,
                hashed_password,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if st.users.contains_key(name) {
                    return Err(AuthError::UserExists);
                }
                let user = User {
                    name: name.as_bytes().to_vec(),
                    password: if *no_password {
                        Vec::new()
                    } else {
                        hashed_password.as_bytes().to_vec()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions {
                        no_password: *no_password,
                    }),
                };
                batch.put(Cf::Auth, user_key(name), user.encode_to_vec());
                st.users.insert(name.clone(), user);
                true
            }
            AuthCmd::UserDelete { name } => {
                if st.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if st.users.remove(name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                batch.delete(Cf::Auth, user_key(name));
                self.invalidate_user(name);
                true
            }
            AuthCmd::UserChangePassword {
                name,
                hashed_password,
            } => {
                let user = st.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password = hashed_password.as_bytes().to_vec();
                batch.put(Cf::Auth, user_key(name), user.encode_to_vec());
                self.invalidate_user(name);
                true
            }
            AuthCmd::UserGrantRole { user, role } => {
                if !st.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !st.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = st.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                match u.roles.binary_search(role) {
                    // Already granted: nothing changes, the revision stays (as etcd).
                    Ok(_) => false,
                    Err(at) => {
                        u.roles.insert(at, role.clone());
                        batch.put(Cf::Auth, user_key(user), u.encode_to_vec());
                        true
                    }
                }
            }
            AuthCmd::UserRevokeRole { name, role } => {
                if st.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = st.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let at = u
                    .roles
                    .binary_search(role)
                    .map_err(|_| AuthError::RoleNotGranted)?;
                u.roles.remove(at);
                batch.put(Cf::Auth, user_key(name), u.encode_to_vec());
                true
            }
            AuthCmd::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if st.roles.contains_key(name) {
                    return Err(AuthError::RoleExists);
                }
                let role = Role {
                    name: name.as_bytes().to_vec(),
                    key_permission: Vec::new(),
                };
                batch.put(Cf::Auth, role_key(name), role.encode_to_vec());
                st.roles.insert(name.clone(), role);
                true
            }
            AuthCmd::RoleDelete { role } => {
                if st.enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if st.roles.remove(role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                batch.delete(Cf::Auth, role_key(role));
                // Users lose the deleted role.
                for (name, u) in st.users.iter_mut() {
                    if let Ok(at) = u.roles.binary_search(role) {
                        u.roles.remove(at);
                        batch.put(Cf::Auth, user_key(name), u.encode_to_vec());
                    }
                }
                true
            }
            AuthCmd::RoleGrantPermission {
                name,
                perm_type,
                key,
                range_end,
            } => {
                let perm = &Permission {
                    perm_type: *perm_type,
                    key: key.clone(),
                    range_end: range_end.clone(),
                };
                let r = st.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                // As etcd: only the first permission with the same key is looked at; a new one
                // goes after every permission whose key is not greater (kept sorted by key).
                let first = r.key_permission.partition_point(|p| p.key < perm.key);
                match r.key_permission.get_mut(first) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => {
                        let at = r.key_permission.partition_point(|p| p.key <= perm.key);
                        r.key_permission.insert(at, perm.clone());
                    }
                }
                batch.put(Cf::Auth, role_key(name), r.encode_to_vec());
                true
            }
            AuthCmd::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = st.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.key_permission.len();
                r.key_permission
                    .retain(|p| !(&p.key == key && &p.range_end == range_end));
                if r.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                batch.put(Cf::Auth, role_key(role), r.encode_to_vec());
                true
            }
        };
        if changed {
            st.revision += 1;
            batch.put(
                Cf::Auth,
                KEY_REVISION.to_vec(),
                st.revision.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }
}

/// A replicated auth command, as the proposer prepared it (passwords already hashed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthCmd {
    /// A user authenticated (its password was checked by the proposer): every member learns the
    /// simple token.
    Authenticate {
        /// The user.
        name: String,
        /// The token.
        token: String,
        /// The auth revision the password was checked at: the token is refused if the store
        /// moved on meanwhile (the password may have changed).
        revision: u64,
    },
    /// Turn authentication on (needs user `root` with role `root`).
    Enable,
    /// Turn authentication off.
    Disable,
    /// Add a user.
    UserAdd {
        /// The name.
        name: String,
        /// The bcrypt hash of the password (empty with `no_password`).
        hashed_password: String,
        /// The user logs in without a password (only by TLS common name).
        no_password: bool,
    },
    /// Delete a user.
    UserDelete {
        /// The name.
        name: String,
    },
    /// Replace a user's password hash.
    UserChangePassword {
        /// The name.
        name: String,
        /// The bcrypt hash of the new password.
        hashed_password: String,
    },
    /// Give a user a role.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Add a role.
    RoleAdd {
        /// The name.
        name: String,
    },
    /// Delete a role (users lose it).
    RoleDelete {
        /// The name.
        role: String,
    },
    /// Grant a role a permission over a key range.
    RoleGrantPermission {
        /// The role.
        name: String,
        /// READ, WRITE or READWRITE (`authpb.Permission.Type`).
        perm_type: i32,
        /// The range's first key.
        key: Vec<u8>,
        /// The range's end (empty: the one key; `\0`: every key from `key` on).
        range_end: Vec<u8>,
    },
    /// Revoke the permission over exactly this key range.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The permission's key.
        key: Vec<u8>,
        /// The permission's range end.
        range_end: Vec<u8>,
    },
}

#[cfg(test)]
mod tests;
