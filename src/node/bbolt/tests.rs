use super::*;

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

fn write(path: &std::path::Path, buckets: &Buckets) -> Result<u64, BboltError> {
    let f = std::fs::File::create(path)?;
    let mut w = Writer::new(f)?;
    for (name, rows) in buckets {
        w.bucket(name)?;
        for (k, v) in rows {
            w.put(k, v)?;
        }
    }
    Ok(w.finish()?.1)
}

fn read(path: &std::path::Path) -> Result<Buckets, BboltError> {
    let r = Reader::open(path)?;
    let mut out = Vec::new();
    for (name, root) in r.buckets()? {
        let mut rows = Vec::new();
        r.visit(&root, |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        out.push((name, rows));
    }
    Ok(out)
}

fn sample() -> Buckets {
    // A bucket of three tree levels (100,000 small rows), one with values spanning pages, an
    // empty one, and one with a single row.
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0u64..100_000)
        .map(|i| (i.to_be_bytes().to_vec(), format!("value-{i}").into_bytes()))
        .collect();
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0u8..5)
        .map(|i| (vec![b'k', i], vec![i; 3000 + 5000 * usize::from(i)]))
        .collect();
    vec![
        (b"big".to_vec(), big),
        (b"empty".to_vec(), Vec::new()),
        (b"key".to_vec(), many),
        (b"one".to_vec(), vec![(b"a".to_vec(), Vec::new())]),
    ]
}

#[test]
fn written_files_read_back_in_order() -> Result<(), BboltError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let want = sample();
    let size = write(&path, &want)?;
    assert_eq!(size % PAGE_SIZE as u64, 0);
    assert_eq!(std::fs::metadata(&path)?.len(), size);
    assert_eq!(read(&path)?, want);
    let r = Reader::open(&path)?;
    assert_eq!(r.size(), size);
    Ok(())
}

#[test]
fn the_writer_refuses_unsorted_input() -> Result<(), BboltError> {
    let mut w = Writer::new(std::io::Cursor::new(Vec::new()))?;
    assert!(matches!(w.put(b"a", b""), Err(BboltError::Misuse(_))));
    w.bucket(b"b")?;
    w.put(b"2", b"")?;
    assert!(matches!(w.put(b"1", b""), Err(BboltError::Misuse(_))));
    assert!(matches!(w.put(b"2", b""), Err(BboltError::Misuse(_))));
    assert!(matches!(w.bucket(b"a"), Err(BboltError::Misuse(_))));
    Ok(())
}

#[test]
fn damaged_files_give_errors_not_panics() -> Result<(), BboltError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let small: Buckets = vec![
        (
            b"a".to_vec(),
            (0u16..2000)
                .map(|i| (i.to_be_bytes().to_vec(), vec![1; 40]))
                .collect(),
        ),
        (b"b".to_vec(), vec![(b"x".to_vec(), b"y".to_vec())]),
    ];
    write(&path, &small)?;
    let good = std::fs::read(&path)?;
    let bad = dir.path().join("bad");
    // Every byte of the meta page, and a deterministic spread of bytes elsewhere, set to values
    // that break lengths, offsets and page numbers.
    let mut positions: Vec<usize> = (0..PAGE_HEADER + 64).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        positions.push((x % good.len() as u64) as usize);
    }
    for (i, at) in positions.into_iter().enumerate() {
        let mut b = good.clone();
        b[at] = [0xff, 0x00, 0x7f, 0x01][i % 4] ^ b[at].rotate_left(3);
        std::fs::write(&bad, &b)?;
        // Any outcome but a panic: the data read back, or an error.
        let _ = read(&bad);
    }
    std::fs::write(&bad, &good[..good.len() / 2])?;
    assert!(read(&bad).is_err());
    std::fs::write(&bad, b"not a database")?;
    assert!(matches!(Reader::open(&bad), Err(BboltError::NotBbolt(_))));
    Ok(())
}
