//! Logging: structured JSON lines (etcd's `zap` logger) at `--log-level`, to every `--log-outputs`
//! target.
//!
//! Invariant: a log line is written whole to each output (one lock per line).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogOutput;

/// Failures setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A log file could not be opened.
    #[error("cannot open log output {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging already initialised")]
    AlreadySet,
}

enum Sink {
    Stderr,
    Stdout,
    File(std::fs::File),
}

/// Writes each line to every configured output.
#[derive(Clone)]
pub struct Tee {
    sinks: Arc<Mutex<Vec<Sink>>>,
}

/// One line being written to the [`Tee`].
pub struct TeeLine {
    tee: Tee,
    buf: Vec<u8>,
}

impl Write for TeeLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TeeLine {
    fn drop(&mut self) {
        let mut sinks = match self.tee.sinks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for s in sinks.iter_mut() {
            // A failing log output must not take the server down.
            let _ = match s {
                Sink::Stderr => io::stderr().write_all(&self.buf),
                Sink::Stdout => io::stdout().write_all(&self.buf),
                Sink::File(f) => f.write_all(&self.buf),
            };
        }
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeLine;
    fn make_writer(&'a self) -> TeeLine {
        TeeLine {
            tee: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `--log-level`.
pub fn init(level: &str, outputs: &[LogOutput]) -> Result<(), TelemetryError> {
    let mut sinks = Vec::new();
    for o in outputs {
        sinks.push(match o {
            LogOutput::Stderr => Sink::Stderr,
            LogOutput::Stdout => Sink::Stdout,
            LogOutput::File(p) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| TelemetryError::Open {
                        path: p.display().to_string(),
                        source,
                    })?,
            ),
        });
    }
    let level = match level {
        "dpanic" | "panic" | "fatal" => "error",
        l => l,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=error,h2=warn,tower=warn")));
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(Tee {
            sinks: Arc::new(Mutex::new(sinks)),
        })
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)
}
