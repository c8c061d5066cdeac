//! oxcd's own client commands for images that carry no etcdctl: `oxcd endpoint health` (the helm
//! test and probes by hand) and `oxcd snapshot save` (the chart's backup CronJob).
//!
//! Invariants: a saved snapshot is written to `<file>.part`, its sha256 trailer is checked while
//! it streams (memory stays bounded by one message whatever the database's size), and only a
//! complete, verified file is renamed into place.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::client::{ClientError, ClientOptions, EtcdClient};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The file could not be written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The stream did not end with a matching sha256.
    #[error("snapshot from {0} failed its integrity check (sha256 trailer mismatch or truncated stream)")]
    Integrity(String),
    /// Some endpoints are unhealthy.
    #[error("unhealthy cluster")]
    Unhealthy,
}

/// etcdctl's `endpoint health`: prints one line per endpoint, fails if any is unhealthy.
pub async fn endpoint_health(endpoints: &[String], opts: &ClientOptions) -> Result<(), OpsError> {
    let mut healthy = true;
    for ep in endpoints {
        let start = std::time::Instant::now();
        let r = match EtcdClient::connect(ep, opts).await {
            Ok(c) => c.health().await,
            Err(e) => Err(e),
        };
        let took = start.elapsed();
        match r {
            Ok(()) => println!("{ep} is healthy: successfully committed proposal: took = {took:?}"),
            Err(e) => {
                healthy = false;
                println!("{ep} is unhealthy: failed to commit proposal: {e}");
            }
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(OpsError::Unhealthy)
    }
}

/// etcdctl's `snapshot save`: streams the first endpoint's backup into `file`.
pub async fn snapshot_save(
    endpoint: &str,
    file: &Path,
    opts: &ClientOptions,
) -> Result<u64, OpsError> {
    let file_err = |e: std::io::Error| OpsError::File {
        path: file.display().to_string(),
        reason: e.to_string(),
    };
    let client = EtcdClient::connect(endpoint, opts).await?;
    let mut stream = client.snapshot().await?;
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = std::path::PathBuf::from(part);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&part).map_err(file_err)?);
    let mut hasher = Sha256::new();
    // The last 32 bytes seen are the trailer candidate; everything before them is hashed.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    let mut total = 0u64;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => {
                let _ = std::fs::remove_file(&part);
                return Err(ClientError::from(s).into());
            }
        };
        out.write_all(&msg.blob).map_err(file_err)?;
        total += msg.blob.len() as u64;
        tail.extend_from_slice(&msg.blob);
        if tail.len() > 32 {
            let cut = tail.len() - 32;
            hasher.update(&tail[..cut]);
            tail.drain(..cut);
        }
    }
    let digest = hasher.finalize();
    if tail.len() != 32 || digest.as_slice() != tail.as_slice() {
        let _ = std::fs::remove_file(&part);
        return Err(OpsError::Integrity(endpoint.to_string()));
    }
    let f = out.into_inner().map_err(|e| file_err(e.into_error()))?;
    f.sync_all().map_err(file_err)?;
    drop(f);
    std::fs::rename(&part, file).map_err(file_err)?;
    Ok(total)
}
