//! How a revision's row is stored in the `kv` column family: one flag byte (put or tombstone)
//! followed by etcd's `mvccpb.KeyValue` in protobuf.
//!
//! Invariants: [`decode_head`] reads exactly the fields [`decode_value`] would give for key,
//! create revision, version and lease, without decoding or copying the value (the start-up index
//! rebuild reads every row and needs only those).

use prost::Message;

use crate::proto::mvccpb::KeyValue;
use crate::storage::StorageError;

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// Encodes a row.
pub(super) fn encode_value(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(if tombstone { FLAG_TOMBSTONE } else { FLAG_PUT });
    kv.encode(&mut out).ok();
    out
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        cf: "kv",
        detail: detail.into(),
    }
}

/// Decodes a row: the key-value and whether it is a tombstone.
pub(super) fn decode_value(raw: &[u8]) -> Result<(KeyValue, bool), StorageError> {
    let (flag, body) = raw.split_first().ok_or_else(|| corrupt("empty value"))?;
    let kv = KeyValue::decode(body).map_err(|e| corrupt(e.to_string()))?;
    Ok((kv, *flag == FLAG_TOMBSTONE))
}

/// What the key index needs of a row, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head<'a> {
    pub key: &'a [u8],
    pub create: i64,
    pub version: i64,
    pub lease: i64,
    pub tombstone: bool,
}

fn varint(buf: &mut &[u8]) -> Result<u64, StorageError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf
            .split_first()
            .ok_or_else(|| corrupt("truncated varint"))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("varint too long"))
}

/// Decodes the key, create revision, version and lease of a row, skipping the value.
pub(super) fn decode_head(raw: &[u8]) -> Result<Head<'_>, StorageError> {
    let (flag, mut buf) = raw.split_first().ok_or_else(|| corrupt("empty value"))?;
    let mut head = Head {
        key: &[],
        create: 0,
        version: 0,
        lease: 0,
        tombstone: *flag == FLAG_TOMBSTONE,
    };
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = varint(&mut buf)? as i64;
                match field {
                    2 => head.create = v,
                    4 => head.version = v,
                    6 => head.lease = v,
                    _ => {}
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?)
                    .map_err(|_| corrupt("length out of range"))?;
                if len > buf.len() {
                    return Err(corrupt("truncated field"));
                }
                let (bytes, rest) = buf.split_at(len);
                if field == 1 {
                    head.key = bytes;
                }
                buf = rest;
            }
            1 => buf = buf.get(8..).ok_or_else(|| corrupt("truncated fixed64"))?,
            5 => buf = buf.get(4..).ok_or_else(|| corrupt("truncated fixed32"))?,
            w => return Err(corrupt(format!("unknown wire type {w}"))),
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_matches_the_full_decode() {
        for (kv, tomb) in [
            (
                KeyValue {
                    key: b"a/key".to_vec(),
                    create_revision: 7,
                    mod_revision: 300_000_000_000,
                    version: 3,
                    value: vec![9; 5000],
                    lease: 0x7fff_ffff_ffff_0001,
                },
                false,
            ),
            (
                KeyValue {
                    key: b"gone".to_vec(),
                    mod_revision: 12,
                    ..Default::default()
                },
                true,
            ),
            (KeyValue::default(), false),
        ] {
            let raw = encode_value(&kv, tomb);
            let (full, t) = decode_value(&raw).expect("decode");
            let head = decode_head(&raw).expect("head");
            assert_eq!(
                head,
                Head {
                    key: &full.key,
                    create: full.create_revision,
                    version: full.version,
                    lease: full.lease,
                    tombstone: t,
                }
            );
        }
        assert!(decode_head(&[]).is_err());
        assert!(decode_head(&[0, 0x0a, 5, b'a']).is_err(), "truncated key");
    }
}
