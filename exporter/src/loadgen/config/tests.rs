use super::*;

fn field_of(config: &LoadgenConfig) -> &'static str {
    match config.validate() {
        Err(LoadgenError::Setting { field, .. }) => field,
        other => panic!("expected a setting error, got {other:?}"),
    }
}

#[test]
fn validate_should_name_the_invalid_field() {
    let ok = LoadgenConfig::default().with_traces(10);
    assert!(ok.validate().is_ok());
    let cases = [
        (LoadgenConfig::default(), "traces"),
        (ok.clone().with_traces(0), "traces"),
        (ok.clone().with_duration(Duration::ZERO), "duration"),
        (ok.clone().with_duration(Duration::MAX), "duration"),
        (ok.clone().with_timeout(Duration::MAX), "timeout"),
        (
            ok.clone().with_retry_initial(Duration::MAX),
            "retry_initial",
        ),
        (ok.clone().with_rate(-1.0), "rate"),
        (ok.clone().with_rate(f64::NAN), "rate"),
        (ok.clone().with_spans_per_trace(0), "spans_per_trace"),
        (ok.clone().with_batch_spans(0), "batch_spans"),
        (
            ok.clone().with_batch_spans(MAX_SPANS_PER_REQUEST + 1),
            "batch_spans",
        ),
        (ok.clone().with_error_ratio(1.5), "error_ratio"),
        (ok.clone().with_workers(0), "workers"),
        (ok.clone().with_service_name(" "), "service_name"),
        (ok.clone().with_timeout(Duration::ZERO), "timeout"),
        (
            ok.clone().with_endpoint("https://example.com:4317"),
            "endpoint",
        ),
        (ok.clone().with_endpoint("localhost"), "endpoint"),
        (ok.clone().with_endpoint("host:99999"), "endpoint"),
        (ok.clone().with_header("bad name", "x"), "headers"),
        (
            ok.clone().with_header("authorization", "line\nbreak"),
            "headers",
        ),
    ];
    for (config, field) in cases {
        assert_eq!(field_of(&config), field, "{config:?}");
    }
}

#[test]
fn url_should_default_per_protocol_and_append_the_traces_path_for_http() {
    let grpc = LoadgenConfig::default();
    assert_eq!(grpc.url(), "http://127.0.0.1:4317");
    let http = grpc.clone().with_protocol(Protocol::Http);
    assert_eq!(http.url(), "http://127.0.0.1:4318/v1/traces");
    let given = http.clone().with_endpoint("collector:4318/");
    assert_eq!(given.url(), "http://collector:4318/v1/traces");
    let full = http.with_endpoint("http://collector:4318/v1/traces");
    assert_eq!(full.url(), "http://collector:4318/v1/traces");
}

#[test]
fn requests_should_hold_whole_traces_and_shrink_at_low_rates() {
    let config = LoadgenConfig::default();
    assert_eq!(config.traces_per_request(), 51);
    assert_eq!(
        config
            .clone()
            .with_spans_per_trace(600)
            .traces_per_request(),
        1
    );
    assert_eq!(config.clone().with_rate(1000.0).traces_per_request(), 10);
    assert_eq!(config.clone().with_rate(1.0).traces_per_request(), 1);
    assert_eq!(config.with_rate(1e9).traces_per_request(), 51);
}
