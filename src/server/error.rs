//! The one place that turns errors into etcd's gRPC codes and exact message strings; etcd's clients
//! match errors by their text.

use tonic::{Code, Status};

use crate::apply::{AlarmRefusal, Refusal};
use crate::auth::AuthError;
use crate::lease::LeaseError;
use crate::mvcc::{MvccError, ReadError};
use crate::node::quota::QuotaError;
use crate::raft::{MembershipError, ProposeError};
use crate::storage::StorageError;

/// An error as etcd reports it to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// Empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Too many ops in a transaction.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Overlapping writes in one transaction branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Unknown sort order or target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// Request over `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Revision compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// Revision in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_*` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// Unknown lease.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// Grant of a lease ID in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// Grant with a TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// No leader.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The leader changed while the request waited.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// Not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// Stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Timed out.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A downgrade target that is not a version.
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    /// A downgrade target other than one minor version down.
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    /// A downgrade job is already on.
    #[error("etcdserver: cluster has a downgrade job in progress")]
    DowngradeInProcess,
    /// Cancel with no downgrade job on.
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    /// An unknown action.
    #[error("etcdserver: unknown method")]
    UnknownMethod,
    /// Applying is far behind committing (or too many proposals wait).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// Peer URLs already used.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Member ID already used.
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    /// `--max-learners` reached.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// The change would lose quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    /// No such member.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// Promote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// Promote of a lagging learner.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// A learner asked for something only voters serve.
    #[error("etcdserver: rpc not supported for learner")]
    LearnerNotSupported,
    /// MoveLeader to a bad target.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The NOSPACE alarm is raised (or the write would raise it).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is raised.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A permission grant without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// A refusal of the auth store (etcd's text after `etcdserver: `).
    #[error("etcdserver: {0}")]
    Auth(AuthError),
    /// A bad argument etcd reports with its own text.
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// An internal failure (storage); the member logs it loudly.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl EtcdError {
    /// etcd's gRPC code for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | KeyNotFound => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExists => Code::FailedPrecondition,
            PermissionNotGiven => Code::InvalidArgument,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            NoLeader | LeaderChanged | Stopped | Timeout => Code::Unavailable,
            NotLeader | PeerUrlExists | MemberIdExists | TooManyLearners | NotEnoughStarted
            | NotLearner | LearnerNotReady | LearnerNotSupported | BadLeaderTransferee
            | DowngradeInProcess | NoInflightDowngrade => Code::FailedPrecondition,
            MemberNotFound => Code::NotFound,
            InvalidArgument(_) | WrongDowngradeVersionFormat | InvalidDowngradeTargetVersion => {
                Code::InvalidArgument
            }
            UnknownMethod => Code::Unknown,
            Auth(a) => match a {
                AuthError::UserEmpty
                | AuthError::RoleEmpty
                | AuthError::InvalidAuthMgmt
                | AuthError::AuthFailed
                | AuthError::OldRevision => Code::InvalidArgument,
                AuthError::InvalidToken => Code::Unauthenticated,
                AuthError::PermissionDenied => Code::PermissionDenied,
                _ => Code::FailedPrecondition,
            },
            Internal(_) => Code::Internal,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<MvccError> for EtcdError {
    fn from(e: MvccError) -> EtcdError {
        match e {
            MvccError::Compacted => EtcdError::Compacted,
            MvccError::FutureRevision => EtcdError::FutureRevision,
            MvccError::KeyNotFound => EtcdError::KeyNotFound,
        }
    }
}

impl From<LeaseError> for EtcdError {
    fn from(e: LeaseError) -> EtcdError {
        match e {
            LeaseError::NotFound => EtcdError::LeaseNotFound,
            LeaseError::Exists => EtcdError::LeaseExists,
        }
    }
}

impl From<AuthError> for EtcdError {
    fn from(e: AuthError) -> EtcdError {
        EtcdError::Auth(e)
    }
}

impl From<Refusal> for EtcdError {
    fn from(e: Refusal) -> EtcdError {
        match e {
            Refusal::Mvcc(m) => m.into(),
            Refusal::Lease(l) => l.into(),
            Refusal::Auth(a) => a.into(),
            Refusal::Alarm(a) => a.into(),
        }
    }
}

impl From<AlarmRefusal> for EtcdError {
    fn from(e: AlarmRefusal) -> EtcdError {
        match e {
            AlarmRefusal::NoSpace => EtcdError::NoSpace,
            AlarmRefusal::Corrupt => EtcdError::Corrupt,
        }
    }
}

impl From<QuotaError> for EtcdError {
    fn from(e: QuotaError) -> EtcdError {
        match e {
            QuotaError::NoSpace(a) => a.into(),
            QuotaError::Storage(s) => s.into(),
        }
    }
}

impl From<StorageError> for EtcdError {
    fn from(e: StorageError) -> EtcdError {
        tracing::error!(error = %e, "storage failure while serving a request");
        EtcdError::Internal(e.to_string())
    }
}

impl From<ReadError> for EtcdError {
    fn from(e: ReadError) -> EtcdError {
        match e {
            ReadError::Mvcc(m) => m.into(),
            ReadError::Storage(s) => s.into(),
            ReadError::Interrupted(s) => EtcdError::Internal(s),
        }
    }
}

impl From<ProposeError> for EtcdError {
    fn from(e: ProposeError) -> EtcdError {
        match e {
            ProposeError::NoLeader => EtcdError::NoLeader,
            ProposeError::LeaderChanged => EtcdError::LeaderChanged,
            ProposeError::NotLeader(_) => EtcdError::NotLeader,
            ProposeError::Stopped => EtcdError::Stopped,
            ProposeError::TooManyRequests => EtcdError::TooManyRequests,
            // A write pending on a leader that lost its quorum gets etcd's answer for it
            // (which etcd gives only after its 7 s request timeout).
            ProposeError::Timeout
            | ProposeError::LeaderUnreachable(_)
            | ProposeError::QuorumLost => EtcdError::Timeout,
        }
    }
}

impl From<MembershipError> for EtcdError {
    fn from(e: MembershipError) -> EtcdError {
        match e {
            MembershipError::PeerUrlExists => EtcdError::PeerUrlExists,
            MembershipError::IdExists => EtcdError::MemberIdExists,
            MembershipError::TooManyLearners => EtcdError::TooManyLearners,
            MembershipError::NotEnoughStarted => EtcdError::NotEnoughStarted,
            MembershipError::NotFound => EtcdError::MemberNotFound,
            MembershipError::NotLearner => EtcdError::NotLearner,
            MembershipError::NotInSync => EtcdError::LearnerNotReady,
            MembershipError::Propose(p) => p.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_strings_match_etcd() {
        let s: Status = EtcdError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s: Status = EtcdError::LeaseNotFound.into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = EtcdError::LeaseExists.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        let s: Status = EtcdError::LeaseTtlTooLarge.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        );
        let s: Status = EtcdError::TooManyOps.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: too many operations in txn request"
        );
    }
}
