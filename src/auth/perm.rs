//! Key-range permission checks: whether the permissions of a user's roles cover a requested
//! range, with etcd's range conventions (empty range end: the one key; `\0`: every key from the
//! key on; otherwise `[key, range_end)`).
//!
//! Invariant: a range is covered only if every key in it lies in some granted range of the
//! right type (READWRITE counts for both); an empty requested range touches no key.

use crate::proto::authpb::{permission::Type as PermType, Permission};

/// What a request does to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads keys (Range, compares, watches, `prev_kv`).
    Read,
    /// Writes keys (Put, DeleteRange, lease revokes).
    Write,
}

/// A half-open key interval; `None` as the end means "no end".
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// The interval `[key, range_end)` in etcd's conventions.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        (key.to_vec(), Some(end))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

fn grants(p: &Permission, access: Access) -> bool {
    match PermType::try_from(p.perm_type) {
        Ok(PermType::Readwrite) => true,
        Ok(PermType::Read) => access == Access::Read,
        Ok(PermType::Write) => access == Access::Write,
        Err(_) => false,
    }
}

/// Whether `perms` grant `access` over every key of `[key, range_end)`.
pub fn covers<'a>(
    perms: impl IntoIterator<Item = &'a Permission>,
    access: Access,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let (start, end) = interval(key, range_end);
    if let Some(e) = &end {
        if start >= *e {
            return true;
        }
    }
    let mut granted: Vec<Interval> = perms
        .into_iter()
        .filter(|p| grants(p, access))
        .map(|p| interval(&p.key, &p.range_end))
        .collect();
    granted.sort();
    // Sweep: `reached` is the first key not yet known to be covered.
    let mut reached = start;
    for (s, e) in granted {
        if s > reached {
            break;
        }
        match e {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    #[test]
    fn single_keys_ranges_prefixes_and_from_key() {
        let perms = [
            perm(PermType::Read, "/", b"0"),
            perm(PermType::Write, "foo", b""),
            perm(PermType::Readwrite, "k", &[0]),
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "c", b"e"),
        ];
        let can = |a: Access, k: &str, e: &[u8]| covers(&perms, a, k.as_bytes(), e);
        assert!(can(Access::Read, "/foo", b""));
        assert!(can(Access::Read, "/", b"0"), "the whole prefix");
        assert!(!can(Access::Write, "/foo", b""), "read-only prefix");
        assert!(can(Access::Write, "foo", b""));
        assert!(
            !can(Access::Write, "foo", b"fop"),
            "a range over the one key and beyond"
        );
        assert!(!can(Access::Read, "foo", b""), "write-only key");
        assert!(can(Access::Write, "zzz", b""), "from-key");
        assert!(can(Access::Read, "k", &[0]), "from-key over from-key");
        assert!(!can(Access::Read, "j", &[0]));
        assert!(can(Access::Read, "a", b"e"), "adjacent ranges join");
        assert!(!can(Access::Read, "a", b"f"));
        assert!(!can(Access::Read, "", &[0]), "every key");
        assert!(
            can(Access::Read, "b", b"a"),
            "an empty range touches nothing"
        );
    }
}
