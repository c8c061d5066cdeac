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
    /// The span exporter could not be set up.
    #[error("distributed tracing: {0}")]
    Tracing(String),
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

/// Distributed tracing settings (etcd's `--experimental-distributed-tracing-*` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The OTLP gRPC collector, `host:port` or a URL.
    pub address: String,
    /// The service name spans carry.
    pub service_name: String,
    /// The instance ID spans carry (empty: none).
    pub instance_id: String,
    /// Sampled requests per million.
    pub sampling_per_million: u64,
}

static TRACING_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (request handlers create a span per request only then).
pub fn tracing_enabled() -> bool {
    TRACING_ON.load(std::sync::atomic::Ordering::Relaxed)
}

fn otel_layer<S>(
    t: &Tracing,
) -> Result<
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TelemetryError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = if t.address.contains("://") {
        t.address.clone()
    } else {
        format!("http://{}", t.address)
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Tracing(e.to_string()))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let mut resource =
        opentelemetry_sdk::Resource::builder().with_service_name(t.service_name.clone());
    if !t.instance_id.is_empty() {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            t.instance_id.clone(),
        ));
    }
    let ratio = (t.sampling_per_million.min(1_000_000) as f64) / 1_000_000.0;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio),
        )))
        .build();
    let tracer = provider.tracer("oxcd");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
    std::sync::OnceLock::new();

/// Exports the spans not yet sent (at exit, inside the runtime).
pub fn shutdown() {
    TRACING_ON.store(false, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            eprintln!("oxcd: flushing spans: {e}");
        }
    }
}

/// Installs the global subscriber: JSON logs at `level` to `outputs`, and with `tracing` an
/// OTLP span exporter (call it inside the tokio runtime: the exporter runs on it). `RUST_LOG`,
/// when set, overrides `--log-level`.
pub fn init(
    level: &str,
    outputs: &[LogOutput],
    tracing: Option<&Tracing>,
) -> Result<(), TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
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
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(Tee {
            sinks: Arc::new(Mutex::new(sinks)),
        })
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    match tracing {
        None => registry.try_init(),
        Some(t) => {
            // Spans go to the collector whatever the log level; the exporter's own crates stay
            // out of it (their logs would be traced in turn).
            let spans = otel_layer(t)?.with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("oxcd")
            }));
            TRACING_ON.store(true, std::sync::atomic::Ordering::Relaxed);
            registry.with(spans).try_init()
        }
    }
    .map_err(|_| TelemetryError::AlreadySet)
}
