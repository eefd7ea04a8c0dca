//! `traceq show` on small fixed inputs, compared with golden outputs in `tests/fixtures/show/`.
//! Run with `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/show")
        .join(name)
}

fn show(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_traceq"))
        .arg("show")
        .args(args)
        .output()
        .expect("running traceq show")
}

fn assert_golden(output: &Output, golden: &str) {
    let actual = String::from_utf8(output.stdout.clone()).unwrap();
    let path = fixture(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        actual,
        expected,
        "stdout differs from {golden}; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn show_should_draw_every_good_line_and_name_the_malformed_ones() {
    let input = fixture("mixed.jsonl");
    let out = show(&[input.to_str().unwrap()]);
    assert_golden(&out, "mixed.txt");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("line 2: not an OTLP/JSON trace request"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: not an OTLP/JSON trace request"),
        "{stderr}"
    );
    assert!(stderr.contains("2 malformed lines skipped"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "malformed input is reported in the status"
    );
}

#[test]
fn show_should_keep_only_error_traces_with_errors_flag() {
    let input = fixture("mixed.jsonl");
    let out = show(&[input.to_str().unwrap(), "--errors"]);
    assert_golden(&out, "mixed_errors.txt");
}

#[test]
fn show_should_select_one_trace_by_id_in_any_case() {
    let input = fixture("mixed.jsonl");
    let out = show(&[
        input.to_str().unwrap(),
        "--trace",
        "4BF92F3577B34DA6A3CE929D0E0E4736",
    ]);
    assert_golden(&out, "mixed_trace.txt");
}

#[test]
fn show_should_fail_clearly_for_an_unknown_trace_or_a_missing_file() {
    let input = fixture("mixed.jsonl");
    let out = show(&[
        input.to_str().unwrap(),
        "--trace",
        "00000000000000000000000000000001",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("no trace 00000000000000000000000000000001"),
        "{stderr}"
    );

    let out = show(&["does-not-exist.jsonl"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("opening does-not-exist.jsonl"), "{stderr}");
}

#[test]
fn show_should_read_a_clean_file_with_success() {
    let input = fixture("clean.jsonl");
    let out = show(&[input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    assert_golden(&out, "clean.txt");
}

#[test]
fn show_should_read_stdin_given_a_dash() {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["show", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(fixture("clean.jsonl")).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_golden(&out, "clean.txt");
}
