//! Why an exporter could not start.
//!
//! Everything that can be wrong with an exporter's configuration is found when it starts, so
//! nothing fails halfway through a run; a downstream that is down is not an error here (OTLP
//! connections are made lazily and retried).

use std::path::PathBuf;

/// An exporter that could not be started. Every message names the exporter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportSetupError {
    /// The endpoint is not a usable address.
    #[error("exporter `{exporter}`: endpoint `{endpoint}` is invalid: {reason}")]
    InvalidEndpoint {
        /// The exporter's name.
        exporter: String,
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings are contradictory or unusable (e.g. `cert_file` without `key_file`, no
    /// `ca_file`, an `https://` endpoint with `insecure`).
    #[error("exporter `{exporter}`: {reason}")]
    Tls {
        /// The exporter's name.
        exporter: String,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file (`tls.ca_file`, `tls.cert_file`, `tls.key_file`) cannot be read.
    #[error("exporter `{exporter}`: cannot read {field} `{}`", path.display())]
    TlsFile {
        /// The exporter's name.
        exporter: String,
        /// The setting naming the file, e.g. `tls.ca_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is not the PEM it should be.
    #[error("exporter `{exporter}`: {field} `{}`: {reason}", path.display())]
    TlsPem {
        /// The exporter's name.
        exporter: String,
        /// The setting naming the file, e.g. `tls.ca_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configured header is not a valid HTTP header or gRPC metadata entry.
    #[error("exporter `{exporter}`: header `{header}` is invalid: {reason}")]
    InvalidHeader {
        /// The exporter's name.
        exporter: String,
        /// The header's name.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The output file could not be opened for appending.
    #[error("exporter `{exporter}`: cannot open `{}` for appending", path.display())]
    OpenFile {
        /// The exporter's name.
        exporter: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("exporter `{exporter}`: cannot build the HTTP client")]
    Client {
        /// The exporter's name.
        exporter: String,
        /// The client library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bound of the exporter is unusable (zero, or a queue too small for one full request).
    #[error("exporter `{exporter}`: {reason}")]
    InvalidLimit {
        /// The exporter's name.
        exporter: String,
        /// What is wrong.
        reason: String,
    },
    /// [`ExporterQueue::start`](super::ExporterQueue::start) was called outside a tokio runtime.
    #[error("exporter `{exporter}`: must be started inside a tokio runtime")]
    NoRuntime {
        /// The exporter's name.
        exporter: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_should_name_the_exporter_and_say_what_is_wrong() {
        let tls = ExportSetupError::TlsFile {
            exporter: "otlp/tempo".into(),
            field: "tls.ca_file",
            path: "ca.pem".into(),
            source: std::io::Error::other("nope"),
        }
        .to_string();
        assert_eq!(
            tls,
            "exporter `otlp/tempo`: cannot read tls.ca_file `ca.pem`"
        );
        let open = ExportSetupError::OpenFile {
            exporter: "file".into(),
            path: "a/b.jsonl".into(),
            source: std::io::Error::other("nope"),
        };
        assert!(open.to_string().contains("`file`"));
        assert!(std::error::Error::source(&open).is_some());
    }
}
