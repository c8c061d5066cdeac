//! etcd's request checks that run before a request reaches the log: empty keys, sort options,
//! `ignore_*` conflicts, transaction size and overlapping writes inside a transaction branch.

use std::collections::HashSet;

use prost::Message;

use super::error::EtcdError;
use crate::mvcc::in_range;
use crate::proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Checks a Range.
pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// Checks a Put.
pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange.
pub fn delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a request that will be proposed against `--max-request-bytes`.
pub fn size(m: &impl Message, max: u64) -> Result<(), EtcdError> {
    if m.encoded_len() as u64 > max {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

fn op(o: &RequestOp, max_ops: i64) -> Result<(), EtcdError> {
    match &o.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(p)) => put(p),
        Some(Request::RequestDeleteRange(d)) => delete(d),
        Some(Request::RequestTxn(t)) => txn_ops(t, max_ops),
        None => Ok(()),
    }
}

fn txn_ops(t: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len()) as i64;
    if opc > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for o in t.success.iter().chain(t.failure.iter()) {
        op(o, max_ops - opc)?;
    }
    Ok(())
}

/// A deleted interval: `[key, end)` by etcd's conventions.
#[derive(Clone)]
struct Interval {
    key: Vec<u8>,
    end: Vec<u8>,
}

fn hits(dels: &[Interval], k: &[u8]) -> bool {
    dels.iter().any(|d| in_range(k, &d.key, &d.end))
}

/// Collects the puts and deletes of one branch, failing on a put that overlaps another put or a
/// delete at the same or a deeper level (then/else of a nested txn may overlap each other).
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|o| match &o.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for o in ops {
        let Some(Request::RequestTxn(t)) = &o.request else {
            continue;
        };
        let (then_puts, then_dels) = intervals(&t.success)?;
        let (else_puts, else_dels) = intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &else_puts {
            if (puts.contains(k) && !then_puts.contains(k)) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for o in ops {
        let Some(Request::RequestPut(p)) = &o.request else {
            continue;
        };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Checks a Txn: size limit, every op, then overlapping writes in each branch.
pub fn txn(t: &TxnRequest, max_txn_ops: u64) -> Result<(), EtcdError> {
    txn_ops(t, max_txn_ops.min(i64::MAX as u64) as i64)?;
    intervals(&t.success)?;
    intervals(&t.failure)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_puts_and_overlapping_deletes() {
        let t = TxnRequest {
            success: vec![put_op("a"), put_op("a")],
            ..Default::default()
        };
        assert_eq!(txn(&t, 128), Err(EtcdError::DuplicateKey));
        let t = TxnRequest {
            success: vec![del_op("a", "c"), put_op("b")],
            ..Default::default()
        };
        assert_eq!(txn(&t, 128), Err(EtcdError::DuplicateKey));
        let t = TxnRequest {
            success: vec![put_op("a"), put_op("b")],
            failure: vec![put_op("a")],
            ..Default::default()
        };
        assert_eq!(txn(&t, 128), Ok(()));
    }

    #[test]
    fn too_many_ops() {
        let t = TxnRequest {
            success: (0..5).map(|i| put_op(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(txn(&t, 4), Err(EtcdError::TooManyOps));
        assert_eq!(txn(&t, 5), Ok(()));
    }
}
