//! The part of bbolt's file format that etcd's backups use: a file of 4096-byte pages holding
//! two meta pages, a freelist page and one B+tree per top-level bucket.
//!
//! [`Writer`] builds such a file from sorted key-value streams, bucket by bucket, bottom-up: a
//! leaf page is written as soon as it is full and its first key goes up into the branch level
//! above, which is written when it is full in turn. [`Reader`] walks a file's buckets page by
//! page.
//!
//! Invariants:
//! - Memory holds at most one unfinished page per tree level (an element larger than a page
//!   makes that page an overflow page of its size); nothing grows with the number of keys.
//! - Every page below the high-water mark is reachable from the meta pages (bbolt's consistency
//!   check reports any other page as "unreachable unfreed"), the freelist is empty, and keys are
//!   written in ascending byte order within a bucket ([`Writer::put`] refuses anything else).
//! - Integers are little-endian, as bbolt writes them on the machines etcd runs on; both meta
//!   pages carry bbolt's FNV-64a checksum.
//! - The reader trusts nothing in the file: every offset, length and page number is checked
//!   against the page it sits in and the file's high-water mark, and the tree depth is bounded,
//!   so a damaged or hostile file gives a [`BboltError`], never a panic or a loop.

use std::io::{Seek, SeekFrom, Write};

mod read;
#[cfg(test)]
mod tests;

pub use read::{BucketRoot, Reader};

/// The page size of the files this module writes (etcd uses the OS page size, 4096 on Linux).
pub const PAGE_SIZE: usize = 4096;
/// bbolt's magic number, the first field of a meta page.
const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
const VERSION: u32 = 2;
/// A page header: id (u64), flags (u16), count (u16), overflow (u32).
const PAGE_HEADER: usize = 16;
/// A leaf element: flags, pos, ksize, vsize (u32 each).
const LEAF_ELEMENT: usize = 16;
/// A branch element: pos (u32), ksize (u32), pgid (u64).
const BRANCH_ELEMENT: usize = 16;
/// A bucket's header as stored in its parent: root pgid (u64), sequence (u64).
const BUCKET_HEADER: usize = 16;
/// Page flags.
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// The flag of a leaf element that is a bucket.
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// The bytes of a meta page's meta that its checksum covers.
const META_SUMMED: usize = 56;
/// The page numbers of the meta pages and of the (empty) freelist this writer makes.
const FREELIST_PGID: u64 = 2;
const FIRST_DATA_PGID: u64 = 3;

/// Failures reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    /// The file could not be read or written.
    #[error("bbolt: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a bbolt database.
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    /// The file's structure is damaged.
    #[error("bbolt database is corrupt: {0}")]
    Corrupt(String),
    /// The writer was used out of order (a programming error, reported rather than panicking).
    #[error("bbolt writer misuse: {0}")]
    Misuse(String),
}

/// FNV-64a, bbolt's meta checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A page image: `n` pages with the header filled in.
fn page_buf(id: u64, flags: u16, count: usize, body: usize) -> Result<Vec<u8>, BboltError> {
    let count = u16::try_from(count)
        .map_err(|_| BboltError::Misuse(format!("{count} elements in one page")))?;
    let pages = (PAGE_HEADER + body).div_ceil(PAGE_SIZE).max(1);
    let mut buf = vec![0u8; pages * PAGE_SIZE];
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&count.to_le_bytes());
    let overflow = u32::try_from(pages - 1)
        .map_err(|_| BboltError::Misuse("an element of over 16 TiB".to_string()))?;
    buf[12..16].copy_from_slice(&overflow.to_le_bytes());
    Ok(buf)
}

fn put_u32(buf: &mut [u8], at: usize, v: usize) -> Result<(), BboltError> {
    let v = u32::try_from(v).map_err(|_| BboltError::Misuse(format!("{v} does not fit a u32")))?;
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// A page being filled: its elements and the bytes they will take.
#[derive(Default)]
struct Level {
    /// Keys and values (leaf) or keys and child page numbers (branch, value empty).
    elements: Vec<(Vec<u8>, Vec<u8>, u64)>,
    /// Header plus elements plus their data, in bytes.
    size: usize,
}

impl Level {
    fn fits(&self, more: usize) -> bool {
        self.elements.is_empty() || self.size + more <= PAGE_SIZE
    }
}

/// Writes a bbolt file: call [`Writer::bucket`] for each top-level bucket in ascending name
/// order, [`Writer::put`] its keys in ascending order, and [`Writer::finish`] at the end.
pub struct Writer<W: Write + Seek> {
    out: W,
    /// The next free page number.
    next: u64,
    /// The finished buckets: name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    /// The bucket being written: its name, and its levels (0 is the leaf level).
    current: Option<Vec<u8>>,
    levels: Vec<Level>,
    /// The last key put in the current bucket.
    last_key: Option<Vec<u8>>,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file in `out` (positioned at its start), reserving the meta and freelist pages.
    pub fn new(mut out: W) -> Result<Self, BboltError> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&vec![0u8; FIRST_DATA_PGID as usize * PAGE_SIZE])?;
        Ok(Writer {
            out,
            next: FIRST_DATA_PGID,
            buckets: Vec::new(),
            current: None,
            levels: Vec::new(),
            last_key: None,
        })
    }

    /// Writes a page image at the next page number and returns that number.
    fn write_page(&mut self, mut buf: Vec<u8>) -> Result<u64, BboltError> {
        let id = self.next;
        buf[0..8].copy_from_slice(&id.to_le_bytes());
        self.out.write_all(&buf)?;
        self.next += (buf.len() / PAGE_SIZE) as u64;
        Ok(id)
    }

    /// Writes `elements` as a leaf page (values are data) or a branch page (pgids are children).
    /// Leaf elements carry `elem_flags` ([`BUCKET_LEAF_FLAG`] in the root bucket, else 0).
    fn write_node(
        &mut self,
        level: usize,
        elements: &[(Vec<u8>, Vec<u8>, u64)],
        elem_flags: u32,
    ) -> Result<u64, BboltError> {
        let leaf = level == 0;
        let head = PAGE_HEADER + elements.len() * LEAF_ELEMENT;
        let data: usize = elements.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        let flags = if leaf { LEAF_PAGE } else { BRANCH_PAGE };
        let mut buf = page_buf(0, flags, elements.len(), head - PAGE_HEADER + data)?;
        let mut at = head;
        for (i, (k, v, pgid)) in elements.iter().enumerate() {
            let e = PAGE_HEADER + i * LEAF_ELEMENT;
            if leaf {
                buf[e..e + 4].copy_from_slice(&elem_flags.to_le_bytes());
                put_u32(&mut buf, e + 4, at - e)?;
                put_u32(&mut buf, e + 8, k.len())?;
                put_u32(&mut buf, e + 12, v.len())?;
            } else {
                put_u32(&mut buf, e, at - e)?;
                put_u32(&mut buf, e + 4, k.len())?;
                buf[e + 8..e + 16].copy_from_slice(&pgid.to_le_bytes());
            }
            buf[at..at + k.len()].copy_from_slice(k);
            at += k.len();
            buf[at..at + v.len()].copy_from_slice(v);
            at += v.len();
        }
        self.write_page(buf)
    }

    /// Starts the next top-level bucket; names must ascend.
    pub fn bucket(&mut self, name: &[u8]) -> Result<(), BboltError> {
        self.end_bucket()?;
        if self
            .buckets
            .last()
            .is_some_and(|(n, _)| n.as_slice() >= name)
        {
            return Err(BboltError::Misuse(format!(
                "bucket {:?} after {:?}",
                String::from_utf8_lossy(name),
                self.buckets
                    .last()
                    .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            )));
        }
        self.current = Some(name.to_vec());
        self.levels = vec![Level {
            size: PAGE_HEADER,
            ..Level::default()
        }];
        self.last_key = None;
        Ok(())
    }

    /// Adds `key` = `value` to the current bucket; keys must ascend.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BboltError> {
        if self.current.is_none() {
            return Err(BboltError::Misuse("put outside a bucket".to_string()));
        }
        if key.is_empty() || self.last_key.as_deref().is_some_and(|l| l >= key) {
            return Err(BboltError::Misuse(format!(
                "key {key:?} is empty or not above the last one"
            )));
        }
        self.last_key = Some(key.to_vec());
        let more = LEAF_ELEMENT + key.len() + value.len();
        if !self.levels[0].fits(more) {
            self.flush(0)?;
        }
        let leaf = &mut self.levels[0];
        leaf.elements.push((key.to_vec(), value.to_vec(), 0));
        leaf.size += more;
        Ok(())
    }

    /// Writes level `level`'s page and hands its first key to the level above.
    fn flush(&mut self, level: usize) -> Result<(), BboltError> {
        let full = std::mem::replace(
            &mut self.levels[level],
            Level {
                size: PAGE_HEADER,
                ..Level::default()
            },
        );
        let pgid = self.write_node(level, &full.elements, 0)?;
        let first = full
            .elements
            .into_iter()
            .next()
            .map(|(k, _, _)| k)
            .unwrap_or_default();
        self.push_branch(level + 1, first, pgid)
    }

    fn push_branch(&mut self, level: usize, key: Vec<u8>, pgid: u64) -> Result<(), BboltError> {
        if self.levels.len() <= level {
            self.levels.push(Level {
                size: PAGE_HEADER,
                ..Level::default()
            });
        }
        let more = BRANCH_ELEMENT + key.len();
        if !self.levels[level].fits(more) {
            self.flush(level)?;
        }
        let l = &mut self.levels[level];
        l.elements.push((key, Vec::new(), pgid));
        l.size += more;
        Ok(())
    }

    /// Writes what is left of the current bucket's levels and records its root.
    fn end_bucket(&mut self) -> Result<(), BboltError> {
        let Some(name) = self.current.take() else {
            return Ok(());
        };
        // The leaf level always yields a page, so an empty bucket has an empty leaf as its root.
        self.flush(0)?;
        let mut level = 1;
        let root = loop {
            let top = self.levels[level + 1..]
                .iter()
                .all(|l| l.elements.is_empty());
            if top && self.levels[level].elements.len() == 1 {
                break self.levels[level].elements[0].2;
            }
            self.flush(level)?;
            level += 1;
        };
        self.levels.clear();
        self.buckets.push((name, root));
        Ok(())
    }

    /// Writes the root bucket, the freelist and the meta pages; returns the file's size.
    pub fn finish(mut self) -> Result<(W, u64), BboltError> {
        self.end_bucket()?;
        let buckets = std::mem::take(&mut self.buckets);
        let entries: Vec<(Vec<u8>, Vec<u8>, u64)> = buckets
            .into_iter()
            .map(|(name, root)| {
                let mut header = vec![0u8; BUCKET_HEADER];
                header[0..8].copy_from_slice(&root.to_le_bytes());
                (name, header, 0)
            })
            .collect();
        let root_page = self.write_node(0, &entries, BUCKET_LEAF_FLAG)?;
        let end = self.next;
        let freelist = page_buf(FREELIST_PGID, FREELIST_PAGE, 0, 0)?;
        self.out
            .seek(SeekFrom::Start(FREELIST_PGID * PAGE_SIZE as u64))?;
        self.out.write_all(&freelist)?;
        for txid in 0..2u64 {
            let mut page = page_buf(txid, META_PAGE, 0, 64)?;
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            // flags (12..16) stay 0; root bucket: root pgid, sequence 0.
            m[16..24].copy_from_slice(&root_page.to_le_bytes());
            m[32..40].copy_from_slice(&FREELIST_PGID.to_le_bytes());
            m[40..48].copy_from_slice(&end.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m[..META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out.seek(SeekFrom::Start(txid * PAGE_SIZE as u64))?;
            self.out.write_all(&page)?;
        }
        let size = end * PAGE_SIZE as u64;
        self.out.seek(SeekFrom::Start(size))?;
        self.out.flush()?;
        Ok((self.out, size))
    }
}
