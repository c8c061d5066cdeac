//! Reading a bbolt file page by page: its meta, its top-level buckets and their keys in order.
//!
//! Invariants: one page (with its overflow) per tree level is in memory at a time, plus one bit
//! per page of the file (a page reached twice is damage: 32 KiB for a 1 GiB file); every page
//! number is below the high-water mark, every element lies inside its page, and the descent is
//! bounded, so damage gives [`BboltError::Corrupt`], never a panic or a loop.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    fnv64a, BboltError, BRANCH_ELEMENT, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, LEAF_ELEMENT,
    LEAF_PAGE, MAGIC, META_PAGE, META_SUMMED, PAGE_HEADER, VERSION,
};

/// The deepest tree the reader descends (bbolt's trees of a few levels hold terabytes).
const MAX_DEPTH: usize = 64;

/// Where a bucket's tree is: a page, or a page stored inline in its parent's value.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    /// The root page number.
    Page(u64),
    /// The bytes of an inline page.
    Inline(Vec<u8>),
}

/// An open bbolt file.
#[derive(Debug)]
pub struct Reader {
    file: File,
    page_size: u64,
    /// The root bucket's page.
    root: u64,
    /// The high-water mark: pages at and past it are not part of the database.
    high: u64,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn corrupt(what: impl Into<String>) -> BboltError {
    BboltError::Corrupt(what.into())
}

/// A meta page's fields: page size, root page, high-water mark, txid; `None` when invalid.
fn parse_meta(page: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let m = page.get(PAGE_HEADER..PAGE_HEADER + 64)?;
    if le_u16(page, 8) & META_PAGE == 0
        || le_u32(m, 0) != MAGIC
        || le_u32(m, 4) != VERSION
        || le_u64(m, 56) != fnv64a(&m[..META_SUMMED])
    {
        return None;
    }
    Some((
        u64::from(le_u32(m, 8)),
        le_u64(m, 16),
        le_u64(m, 40),
        le_u64(m, 48),
    ))
}

impl Reader {
    /// Whether the start of `path` is a bbolt meta page.
    pub fn is_bbolt(path: &Path) -> bool {
        let Ok(f) = File::open(path) else {
            return false;
        };
        let mut head = [0u8; PAGE_HEADER + 8];
        f.read_exact_at(&mut head, 0).is_ok() && le_u32(&head, PAGE_HEADER) == MAGIC
    }

    /// Opens `path`, choosing the valid meta page with the higher transaction id, as bbolt does.
    pub fn open(path: &Path) -> Result<Reader, BboltError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let name = path.display().to_string();
        let mut first = vec![0u8; PAGE_HEADER + 64];
        file.read_exact_at(&mut first, 0)
            .map_err(|_| BboltError::NotBbolt(name.clone()))?;
        if le_u32(&first, PAGE_HEADER) != MAGIC {
            return Err(BboltError::NotBbolt(name));
        }
        // The page size is in meta 0; when meta 0 is damaged, try the usual sizes for meta 1.
        let mut candidates = Vec::new();
        if let Some(m) = parse_meta(&first) {
            candidates.push(m);
        }
        let sizes: Vec<u64> = match candidates.first() {
            Some(m) => vec![m.0],
            None => vec![4096, 8192, 16384, 65536],
        };
        for size in sizes {
            let mut second = vec![0u8; PAGE_HEADER + 64];
            if file.read_exact_at(&mut second, size).is_ok() {
                if let Some(m) = parse_meta(&second).filter(|m| m.0 == size) {
                    candidates.push(m);
                }
            }
        }
        let (page_size, root, high, _) = candidates
            .into_iter()
            .max_by_key(|m| m.3)
            .ok_or_else(|| corrupt("neither meta page is valid"))?;
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(corrupt(format!("page size {page_size}")));
        }
        if high.saturating_mul(page_size) > len || root >= high || root < 2 {
            return Err(corrupt(format!(
                "{high} pages of {page_size} bytes (root {root}) in a file of {len} bytes"
            )));
        }
        Ok(Reader {
            file,
            page_size,
            root,
            high,
        })
    }

    /// The database's size as bbolt reports it: its pages times the page size.
    pub fn size(&self) -> u64 {
        self.high * self.page_size
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BboltError> {
        if id < 2 || id >= self.high {
            return Err(corrupt(format!("page {id} outside 2..{}", self.high)));
        }
        let mut head = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut head, id * self.page_size)?;
        let pages = u64::from(le_u32(&head, 12)) + 1;
        if id + pages > self.high {
            return Err(corrupt(format!("page {id} overflows past the end")));
        }
        let len = usize::try_from(pages * self.page_size)
            .map_err(|_| corrupt(format!("page {id} is too large")))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, id * self.page_size)?;
        Ok(buf)
    }

    /// The top-level buckets, in order: name and root.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, BboltError> {
        let mut out = Vec::new();
        let mut seen = Seen::new(self.high);
        walk(
            self,
            Node::Page(self.root),
            0,
            &mut seen,
            &mut |flags, k, v| {
                if flags & BUCKET_LEAF_FLAG == 0 {
                    return Err(corrupt(format!(
                        "top-level key {:?} is not a bucket",
                        String::from_utf8_lossy(k)
                    )));
                }
                out.push((k.to_vec(), bucket_root(v)?));
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Visits the keys and values of a top-level bucket in order (nested buckets, which etcd
    /// does not use, are refused).
    pub fn visit(
        &self,
        bucket: &BucketRoot,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), BboltError>,
    ) -> Result<(), BboltError> {
        let node = match bucket {
            BucketRoot::Page(id) => Node::Page(*id),
            BucketRoot::Inline(page) => Node::Inline(page),
        };
        let mut seen = Seen::new(self.high);
        walk(self, node, 0, &mut seen, &mut |flags, k, v| {
            if flags & BUCKET_LEAF_FLAG != 0 {
                return Err(corrupt(format!(
                    "nested bucket {:?}",
                    String::from_utf8_lossy(k)
                )));
            }
            f(k, v)
        })
    }
}

fn bucket_root(v: &[u8]) -> Result<BucketRoot, BboltError> {
    if v.len() < BUCKET_HEADER {
        return Err(corrupt("bucket header too short"));
    }
    match le_u64(v, 0) {
        0 => Ok(BucketRoot::Inline(v[BUCKET_HEADER..].to_vec())),
        id => Ok(BucketRoot::Page(id)),
    }
}

/// The pages a walk has reached.
struct Seen(Vec<u64>);

impl Seen {
    fn new(pages: u64) -> Seen {
        Seen(vec![0; usize::try_from(pages.div_ceil(64)).unwrap_or(0)])
    }

    /// Marks `id`; false when it was already marked.
    fn mark(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, id % 64);
        match self.0.get_mut(word) {
            Some(w) if *w & (1 << bit) == 0 => {
                *w |= 1 << bit;
                true
            }
            _ => false,
        }
    }
}

enum Node<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// What a walk calls for each leaf element: (flags, key, value).
type LeafVisitor<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), BboltError> + 'a;

/// Visits the leaf elements under `node` in key order: (flags, key, value).
fn walk(
    r: &Reader,
    node: Node<'_>,
    depth: usize,
    seen: &mut Seen,
    f: &mut LeafVisitor<'_>,
) -> Result<(), BboltError> {
    if depth > MAX_DEPTH {
        return Err(corrupt("tree deeper than 64 levels (a page cycle?)"));
    }
    let owned;
    let page: &[u8] = match node {
        Node::Page(id) => {
            owned = r.page(id)?;
            if !seen.mark(id) {
                return Err(corrupt(format!("page {id} is reached twice")));
            }
            &owned
        }
        Node::Inline(p) => p,
    };
    if page.len() < PAGE_HEADER {
        return Err(corrupt("page shorter than its header"));
    }
    let flags = le_u16(page, 8);
    let count = usize::from(le_u16(page, 10));
    let slice = |at: usize, len: usize| -> Result<&[u8], BboltError> {
        page.get(
            at..at
                .checked_add(len)
                .ok_or_else(|| corrupt("length overflow"))?,
        )
        .ok_or_else(|| corrupt(format!("element data at {at}+{len} outside its page")))
    };
    if flags & LEAF_PAGE != 0 {
        for i in 0..count {
            let e = PAGE_HEADER + i * LEAF_ELEMENT;
            let el = slice(e, LEAF_ELEMENT)?;
            let (eflags, pos, ksize, vsize) = (
                le_u32(el, 0),
                le_u32(el, 4) as usize,
                le_u32(el, 8) as usize,
                le_u32(el, 12) as usize,
            );
            let k = slice(e + pos, ksize)?;
            let v = slice(e + pos + ksize, vsize)?;
            f(eflags, k, v)?;
        }
        Ok(())
    } else if flags & BRANCH_PAGE != 0 {
        if matches!(node, Node::Inline(_)) {
            return Err(corrupt("an inline bucket with a branch page"));
        }
        for i in 0..count {
            let e = PAGE_HEADER + i * BRANCH_ELEMENT;
            let el = slice(e, BRANCH_ELEMENT)?;
            walk(r, Node::Page(le_u64(el, 8)), depth + 1, seen, f)?;
        }
        Ok(())
    } else {
        Err(corrupt(format!("page of type {flags:#x} inside a tree")))
    }
}
