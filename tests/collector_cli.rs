//! The `traceq collector` command line: configuration errors name the field, the printed
//! defaults are a valid configuration, and a missing exporter is explained.

use std::process::Command;

fn traceq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn print_config_should_print_a_configuration_that_reads_back() {
    let (ok, stdout, _) = traceq(&["collector", "--print-config"]);
    assert!(ok);
    assert!(stdout.contains("tail_sampling:"), "{stdout}");
    let cfg = traceq::collector::CollectorConfig::from_yaml(&stdout).unwrap();
    assert_eq!(cfg.exporters.len(), 1);
}

#[test]
fn bad_configuration_should_exit_with_an_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, field) in [
        ("exporters: {otlp: {endpoint: 'x:1', compresion: gzip}}", "compresion"),
        (
            "receivers: {otlp: {protocols: {grpc: {endpoint: 'not an address'}}}}\nexporters: {debug: }",
            "receivers.otlp.protocols.grpc.endpoint",
        ),
        (
            "processors: {tail_sampling: {policies: [{name: p, type: latency, latency: {threshold_ms: -5}}]}}\nexporters: {debug: }",
            "threshold_ms",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (ok, _, stderr) = traceq(&["collector", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{yaml}");
        assert!(stderr.contains(field), "{yaml}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn no_exporter_should_be_explained() {
    let (ok, _, stderr) = traceq(&["collector"]);
    assert!(!ok);
    assert!(stderr.contains("no exporter"), "{stderr}");
    assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
}

#[test]
fn an_https_otlp_endpoint_should_need_a_ca_and_name_a_bad_certificate_file() {
    let base = [
        "collector",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        "https://127.0.0.1:1",
        "--grpc-endpoint",
        "127.0.0.1:0",
        "--http-endpoint",
        "127.0.0.1:0",
        "--metrics-endpoint",
        "127.0.0.1:0",
    ];
    let (ok, _, stderr) = traceq(&base);
    assert!(!ok);
    assert!(stderr.contains("tls.ca_file is required"), "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--otlp-certificate", "/nonexistent/ca.pem"]);
    let (ok, _, stderr) = traceq(&args);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
