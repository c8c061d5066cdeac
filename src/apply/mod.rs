//! The deterministic state machine: one replicated command becomes writes in one atomic batch.
//!
//! Invariants:
//! - No clock, randomness or I/O other than the storage batch: every member applying the same
//!   commands in the same order reaches the same state and returns the same [`Applied`] values.
//!   (A primary lessor stamps leader-local deadlines on grants; they are not replicated state.)
//! - A command that fails (compacted revision, missing key, unknown lease) changes nothing: every
//!   check runs before the first write.
//! - The ops of one transaction share one revision; nested transactions share their parent's.
//! - Lease attachments follow the keys: after each command, the keys it put or deleted are handed
//!   to the lessor, so a revoke later in the same batch sees them. A revoke deletes its lease's
//!   keys in one revision, through the same writer, so watchers see the DELETEs.

pub mod alarm;
pub mod downgrade;
mod pb;

use crate::auth::{Access, AuthCmd, AuthError, AuthStore, Caller};
use crate::lease::{LeaseError, Lessor};
use crate::mvcc::{Mvcc, MvccError, ReadError, TxnState, Writer};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::storage::StorageError;
pub use alarm::Alarms;
pub use pb::Pb;

/// A replicated command: what goes into the raft log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// KV Put.
    Put(Pb<PutRequest>),
    /// KV DeleteRange.
    DeleteRange(Pb<DeleteRangeRequest>),
    /// KV Txn.
    Txn(Pb<TxnRequest>),
    /// KV Compact.
    Compact(Pb<CompactionRequest>),
    /// Several commands proposed together (one log entry), applied in order; each keeps its own
    /// revision and result.
    Batch(Vec<Op>),
    /// LeaseGrant with its final ID and TTL (the proposer picks the ID and raises the TTL).
    LeaseGrant(Pb<LeaseGrantRequest>),
    /// LeaseRevoke, from a client or from the leader when the lease expired.
    LeaseRevoke(Pb<LeaseRevokeRequest>),
    /// Remaining TTLs the leader checkpoints, so they survive a leader change.
    LeaseCheckpoint(Pb<LeaseCheckpointRequest>),
    /// A change to users, roles or permissions (passwords already hashed by the proposer).
    Auth(AuthCmd),
    /// An auth change requested by `by` (the user its token named; `None` without one): it
    /// applies only if authentication is off, or `by` has the root role when it applies.
    AuthBy {
        /// The requesting user.
        by: Option<String>,
        /// The change.
        cmd: AuthCmd,
    },
    /// A client command whose caller's permissions were checked at auth revision
    /// `auth_revision`: it applies only if authentication is off, or it was checked and the auth
    /// store is still at that revision (otherwise it fails with `revision of auth store is old`,
    /// or `user name is empty` if authentication came on meanwhile, and the client retries).
    Guarded {
        /// The auth revision the permissions were checked at (or seen at, unchecked).
        auth_revision: u64,
        /// Whether authentication was on, and the caller checked.
        checked: bool,
        /// The checked caller's user name (empty when unchecked).
        user: String,
        /// The command.
        op: Box<Op>,
    },
    /// Maintenance Alarm ACTIVATE or DEACTIVATE (GET is served locally).
    Alarm(Pb<AlarmRequest>),
    /// Maintenance Downgrade ENABLE (`enabled`, to `target`, `major.minor.0`) or CANCEL.
    Downgrade {
        /// Whether the job is on.
        enabled: bool,
        /// The target cluster version (empty on cancel).
        target: String,
    },
}

impl Op {
    /// About how many bytes the command takes (to bound batches), at least what its log
    /// encoding takes for everything but auth changes (so an entry's buffer, sized from it,
    /// is not copied to a larger one while it is written).
    pub fn size_hint(&self) -> usize {
        use prost::Message;
        // bincode's enum tag (4 bytes) and a byte string's length (8).
        const TAG_AND_LEN: usize = 12;
        match self {
            Op::Put(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::DeleteRange(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::Txn(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::Compact(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::Batch(ops) => TAG_AND_LEN + ops.iter().map(Op::size_hint).sum::<usize>(),
            Op::LeaseGrant(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::LeaseRevoke(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::LeaseCheckpoint(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::Auth(_) | Op::AuthBy { .. } => 256,
            // The tag, the revision, the flag and the user's length and bytes.
            Op::Guarded { op, user, .. } => 4 + 8 + 1 + 8 + user.len() + op.size_hint(),
            Op::Alarm(r) => TAG_AND_LEN + r.0.encoded_len(),
            Op::Downgrade { target, .. } => TAG_AND_LEN + 1 + target.len(),
        }
    }
}

/// Why a command was refused: deterministic, the same on every member, and nothing changed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum Refusal {
    /// A refusal of the multi-version store.
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// A refusal of the lease table.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A refusal of the auth store.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An alarm stops the command.
    #[error(transparent)]
    Alarm(#[from] AlarmRefusal),
}

/// Commands an active alarm refuses, as etcd's capped and corrupt appliers do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum AlarmRefusal {
    /// NOSPACE is raised: puts and lease grants are refused until it is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// CORRUPT is raised: no key-value or lease command applies.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

/// The outcome of applying one command, returned identically by every member.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Applied {
    /// An entry with no command (leader's blank entry, membership change).
    Nothing,
    /// A Put's response (header carries only the revision).
    Put(Pb<PutResponse>),
    /// A DeleteRange's response.
    DeleteRange(Pb<DeleteRangeResponse>),
    /// A Txn's response.
    Txn(Pb<TxnResponse>),
    /// A compaction succeeded; the store's revision at the time.
    Compacted {
        /// The current revision when the compaction applied.
        revision: i64,
    },
    /// The command failed deterministically and changed nothing.
    Failed(Refusal),
    /// The results of an [`Op::Batch`], in order.
    Batch(Vec<Applied>),
    /// A lease was granted.
    LeaseGranted {
        /// Its ID.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
        /// The store's revision.
        revision: i64,
    },
    /// A lease was revoked and its keys deleted.
    LeaseRevoked {
        /// The store's revision after the deletes.
        revision: i64,
    },
    /// Checkpoints were recorded.
    Checkpointed,
    /// An alarm command applied.
    Alarm(Pb<AlarmResponse>),
    /// A downgrade job was set or cancelled.
    Downgrade,
    /// An auth command applied.
    AuthChanged {
        /// The store's (key-value) revision, for the response header.
        revision: i64,
    },
}

/// The tables a command may change besides the key-value store.
#[derive(Debug, Clone, Copy)]
pub struct Tables<'a> {
    /// The lease table.
    pub leases: &'a Lessor,
    /// The auth store.
    pub auth: &'a AuthStore,
    /// The alarm table.
    pub alarms: &'a Alarms,
}

/// Whether an active alarm refuses `op` (etcd's capped applier under NOSPACE: puts, txns that
/// put, lease grants; its corrupt applier under CORRUPT: every key-value and lease command).
fn alarm_refuses(alarms: &Alarms, op: &Op) -> Option<AlarmRefusal> {
    let kv_or_lease = matches!(
        op,
        Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Txn(_)
            | Op::Compact(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
    );
    if kv_or_lease && alarms.has(AlarmType::Corrupt) {
        return Some(AlarmRefusal::Corrupt);
    }
    let grows = match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => txn_has_put(&t.0),
        _ => false,
    };
    if grows && alarms.has(AlarmType::Nospace) {
        return Some(AlarmRefusal::NoSpace);
    }
    None
}

fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Applies one command through `w`, keeping the lease table and the auth store in `tables` in
/// step. Only storage failures are errors; everything else is a value.
pub fn apply_op(w: &mut Writer<'_>, tables: Tables<'_>, op: &Op) -> Result<Applied, StorageError> {
    if let Op::Batch(ops) = op {
        return ops
            .iter()
            .map(|op| apply_op(w, tables, op))
            .collect::<Result<Vec<_>, _>>()
            .map(Applied::Batch);
    }
    let mark = w.change_count();
    let out = apply_one(w, tables, op)?;
    tables.leases.track(w.changes_since(mark));
    Ok(out)
}

fn apply_one(w: &mut Writer<'_>, tables: Tables<'_>, op: &Op) -> Result<Applied, StorageError> {
    let leases = tables.leases;
    if let Some(r) = alarm_refuses(tables.alarms, op) {
        return Ok(Applied::Failed(r.into()));
    }
    match op {
        Op::Downgrade { enabled, target } => {
            downgrade::DowngradeInfo {
                target_version: target.clone(),
                enabled: *enabled,
            }
            .write(w.batch_mut());
            Ok(Applied::Downgrade)
        }
        Op::Alarm(req) => {
            let r = &req.0;
            let changed = match AlarmAction::try_from(r.action) {
                Ok(AlarmAction::Activate) => {
                    tables.alarms.activate(w.batch_mut(), r.member_id, r.alarm)
                }
                Ok(AlarmAction::Deactivate) => {
                    tables
                        .alarms
                        .deactivate(w.batch_mut(), r.member_id, r.alarm)
                }
                _ => None,
            };
            Ok(Applied::Alarm(Pb(AlarmResponse {
                header: header(w.begin().view()),
                alarms: changed.into_iter().collect(),
            })))
        }
        Op::Put(req) => {
            let mut t = w.begin();
            if let Err(e) = check_put(w, leases, &t, &req.0)? {
                return Ok(Applied::Failed(e));
            }
            let resp = exec_put(w, &mut t, &req.0)?;
            w.end(t);
            Ok(Applied::Put(Pb(resp)))
        }
        Op::DeleteRange(req) => {
            let mut t = w.begin();
            let resp = exec_delete(w, &mut t, &req.0)?;
            w.end(t);
            Ok(Applied::DeleteRange(Pb(resp)))
        }
        Op::Txn(req) => {
            let t = w.begin();
            let mut path = Vec::new();
            txn_path(w, &t, &req.0, &mut path)?;
            if let Err(e) = check_txn(w, leases, &t, &req.0, &path, &mut 0)? {
                return Ok(Applied::Failed(e));
            }
            let mut t = t;
            let mut resp = exec_txn(w, &mut t, &req.0, &path, &mut 0)?;
            let rev = w.end(t);
            resp.header = header(rev);
            Ok(Applied::Txn(Pb(resp)))
        }
        Op::Compact(req) => match w.compact(req.0.revision) {
            Ok(()) => {
                let t = w.begin();
                Ok(Applied::Compacted { revision: t.view() })
            }
            Err(e) => Ok(Applied::Failed(e.into())),
        },
        Op::LeaseGrant(req) => {
            let r = leases.grant(w.batch_mut(), req.0.id, req.0.ttl);
            let revision = w.begin().view();
            Ok(match r {
                Ok(()) => Applied::LeaseGranted {
                    id: req.0.id,
                    ttl: req.0.ttl,
                    revision,
                },
                Err(e) => Applied::Failed(e.into()),
            })
        }
        Op::LeaseRevoke(req) => {
            let id = req.0.id;
            let Some(keys) = leases.keys(id) else {
                return Ok(Applied::Failed(LeaseError::NotFound.into()));
            };
            let mut t = w.begin();
            for key in &keys {
                w.delete_range(&mut t, key, &[], false)?;
            }
            let revision = w.end(t);
            crate::crash_point!("apply-lease-revoke");
            // The lease exists (checked above, and applying is sequential).
            if let Err(e) = leases.remove(w.batch_mut(), id) {
                return Ok(Applied::Failed(e.into()));
            }
            Ok(Applied::LeaseRevoked { revision })
        }
        Op::LeaseCheckpoint(req) => {
            for c in &req.0.checkpoints {
                leases.checkpoint(w.batch_mut(), c.id, c.remaining_ttl);
            }
            Ok(Applied::Checkpointed)
        }
        Op::AuthBy { by, cmd } => {
            if let Err(e) = tables.auth.admin_at_apply(by.as_deref()) {
                return Ok(Applied::Failed(e.into()));
            }
            apply_one(w, tables, &Op::Auth(cmd.clone()))
        }
        Op::Auth(cmd) => Ok(match tables.auth.apply(w.batch_mut(), cmd) {
            Ok(()) => Applied::AuthChanged {
                revision: w.begin().view(),
            },
            Err(e) => Applied::Failed(e.into()),
        }),
        Op::Guarded {
            auth_revision,
            checked,
            user,
            op,
        } => {
            if tables.auth.enabled() {
                if !checked {
                    // Authentication came on after the request was taken without a user.
                    return Ok(Applied::Failed(AuthError::UserEmpty.into()));
                }
                if tables.auth.revision() != *auth_revision {
                    return Ok(Applied::Failed(AuthError::OldRevision.into()));
                }
                // A lease's keys may have changed since the check (as etcd, at apply): a revoke
                // needs WRITE on every key it would delete now.
                if let Op::LeaseRevoke(req) = op.as_ref() {
                    let caller = Caller {
                        user: user.clone(),
                        revision: *auth_revision,
                    };
                    for key in leases.keys(req.0.id).unwrap_or_default() {
                        if let Err(e) = tables.auth.check(&caller, Access::Write, &key, &[]) {
                            return Ok(Applied::Failed(e.into()));
                        }
                    }
                }
            }
            apply_one(w, tables, op)
        }
        Op::Batch(_) => apply_op(w, tables, op),
    }
}

/// Rebuilds the lease table from storage and attaches the live leased keys of `mvcc` (at
/// start-up and after a snapshot install).
pub fn restore_leases(leases: &Lessor, mvcc: &Mvcc) -> Result<(), StorageError> {
    leases.load(mvcc.leased_keys())
}

fn check_put(
    w: &Writer<'_>,
    leases: &Lessor,
    t: &TxnState,
    req: &PutRequest,
) -> Result<Result<(), Refusal>, StorageError> {
    if (req.ignore_value || req.ignore_lease) && w.get(t, &req.key).is_none() {
        return Ok(Err(MvccError::KeyNotFound.into()));
    }
    if req.lease != 0 && !leases.exists(req.lease) {
        return Ok(Err(LeaseError::NotFound.into()));
    }
    Ok(Ok(()))
}

fn check_range(t: &TxnState, req: &RangeRequest, compacted: i64) -> Result<(), Refusal> {
    if req.revision > t.view() {
        return Err(MvccError::FutureRevision.into());
    }
    if req.revision > 0 && req.revision < compacted {
        return Err(MvccError::Compacted.into());
    }
    Ok(())
}

fn exec_put(
    w: &mut Writer<'_>,
    t: &mut TxnState,
    req: &PutRequest,
) -> Result<PutResponse, StorageError> {
    let prev = w.get(t, &req.key);
    let mut prev_kv: Option<KeyValue> = None;
    if req.prev_kv || req.ignore_value {
        if let Some(p) = &prev {
            prev_kv = w.values(std::slice::from_ref(p))?.into_iter().next();
        }
    }
    let value = if req.ignore_value {
        prev_kv
            .as_ref()
            .map(|kv| kv.value.clone())
            .unwrap_or_default()
    } else {
        req.value.clone()
    };
    let lease = if req.ignore_lease {
        prev.as_ref().map(|p| p.lease).unwrap_or(0)
    } else {
        req.lease
    };
    let rev = w.put(t, &req.key, value, lease);
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if req.prev_kv { prev_kv } else { None },
    })
}

fn exec_delete(
    w: &mut Writer<'_>,
    t: &mut TxnState,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StorageError> {
    let (deleted, prev_kvs) = w.delete_range(t, &req.key, &req.range_end, req.prev_kv)?;
    Ok(DeleteRangeResponse {
        header: header(t.view()),
        deleted,
        prev_kvs,
    })
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(target) => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version)
                | (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
                | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                _ => kv.lease,
            };
            have.cmp(&want)
        }
        Err(_) => return true,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

fn compare(w: &Writer<'_>, t: &TxnState, c: &Compare) -> Result<bool, StorageError> {
    let vis = w.visible(t, &c.key, &c.range_end);
    let is_value = c.target == CompareTarget::Value as i32;
    if vis.is_empty() {
        // A missing key compares as all zeroes, but never equals any value.
        return Ok(!is_value && compare_kv(c, &KeyValue::default()));
    }
    if is_value {
        Ok(w.values(&vis)?.iter().all(|kv| compare_kv(c, kv)))
    } else {
        Ok(vis.iter().all(|v| {
            compare_kv(
                c,
                &KeyValue {
                    key: v.key.clone(),
                    create_revision: v.create,
                    mod_revision: v.rev.main,
                    version: v.version,
                    value: Vec::new(),
                    lease: v.lease,
                },
            )
        }))
    }
}

/// Evaluates every compare on the chosen path before any op runs, depth first.
fn txn_path(
    w: &Writer<'_>,
    t: &TxnState,
    req: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StorageError> {
    let mut ok = true;
    for c in &req.compare {
        if !compare(w, t, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    let ops = if ok { &req.success } else { &req.failure };
    for op in ops {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            txn_path(w, t, nested, path)?;
        }
    }
    Ok(())
}

fn check_txn(
    w: &Writer<'_>,
    leases: &Lessor,
    t: &TxnState,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<Result<(), Refusal>, StorageError> {
    let ok = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    let ops = if ok { &req.success } else { &req.failure };
    let compacted = w.compacted();
    for op in ops {
        let res = match &op.request {
            Some(Request::RequestPut(p)) => check_put(w, leases, t, p)?,
            Some(Request::RequestRange(r)) => check_range(t, r, compacted),
            Some(Request::RequestTxn(nested)) => check_txn(w, leases, t, nested, path, pos)?,
            Some(Request::RequestDeleteRange(_)) | None => Ok(()),
        };
        if res.is_err() {
            return Ok(res);
        }
    }
    Ok(Ok(()))
}

fn exec_txn(
    w: &mut Writer<'_>,
    t: &mut TxnState,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, StorageError> {
    let ok = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    let ops = if ok { &req.success } else { &req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                let res = match w.range(t, r) {
                    Ok(res) => res,
                    Err(ReadError::Storage(e)) => return Err(e),
                    // Ruled out by check_txn: the view only moves forward inside a transaction.
                    // (Interrupted comes only from the blocking pool, which a writer never uses.)
                    Err(ReadError::Mvcc(_) | ReadError::Interrupted(_)) => Default::default(),
                };
                Some(Response::ResponseRange(RangeResponse {
                    header: header(res.header_revision),
                    kvs: res.kvs,
                    more: res.more,
                    count: res.count,
                }))
            }
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(exec_put(w, t, p)?)),
            Some(Request::RequestDeleteRange(d)) => {
                Some(Response::ResponseDeleteRange(exec_delete(w, t, d)?))
            }
            Some(Request::RequestTxn(nested)) => {
                let mut r = exec_txn(w, t, nested, path, pos)?;
                r.header = Some(ResponseHeader::default());
                Some(Response::ResponseTxn(r))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}

#[cfg(test)]
mod tests;
