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
//! - A role's permissions are kept sorted by key and range end; a grant over the same key and
//!   range end replaces the earlier permission's type.

use std::collections::BTreeMap;

use parking_lot::RwLock;
use prost::Message;

use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::storage::{Batch, Cf, Storage, StorageError};

/// The role (and user) that bypasses every permission check.
pub const ROOT: &str = "root";

const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";
const KEY_ENABLED: &[u8] = b"enabled";
const KEY_REVISION: &[u8] = b"revision";

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
#[derive(Debug)]
pub struct AuthStore {
    storage: Storage,
    state: RwLock<State>,
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

fn perm_order(p: &Permission) -> (&[u8], &[u8]) {
    (p.key.as_slice(), p.range_end.as_slice())
}

impl AuthStore {
    /// Opens the store kept in `storage`.
    pub fn open(storage: Storage) -> Result<AuthStore, StorageError> {
        let store = AuthStore {
            storage,
            state: RwLock::new(State::default()),
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

    /// Applies one command to `batch` (apply only). Every check runs before the first change.
    pub fn apply(&self, batch: &mut Batch, cmd: &AuthCmd) -> Result<(), AuthError> {
        let mut st = self.state.write();
        let changed = match cmd {
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
                true
            }
            AuthCmd::UserChangePassword {
                name,
                hashed_password,
            } => {
                let user = st.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password = hashed_password.as_bytes().to_vec();
                batch.put(Cf::Auth, user_key(name), user.encode_to_vec());
                true
            }
            AuthCmd::UserGrantRole { user, role } => {
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
                match r
                    .key_permission
                    .binary_search_by(|p| perm_order(p).cmp(&perm_order(perm)))
                {
                    Ok(at) => r.key_permission[at].perm_type = perm.perm_type,
                    Err(at) => r.key_permission.insert(at, perm.clone()),
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
                let at = r
                    .key_permission
                    .iter()
                    .position(|p| &p.key == key && &p.range_end == range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                r.key_permission.remove(at);
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
