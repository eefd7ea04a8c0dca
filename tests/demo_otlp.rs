//! `traceq demo --otlp-endpoint`: the kept traces go to an OTLP/HTTP receiver (a stand-in on
//! loopback here) instead of the file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path and body of every request received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn serve_connection(stream: TcpStream, received: &Received) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        received.lock().unwrap().push((path, body));
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
}

#[test]
fn demo_should_send_kept_traces_to_the_otlp_endpoint_instead_of_the_file() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve_connection(stream, &sink));
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unused.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["demo", "--duration", "1", "--objects", "100"])
        .arg("--output")
        .arg(&file)
        .arg("--otlp-endpoint")
        .arg(format!("http://{addr}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("kept traces sent to http://{addr}/v1/traces")));
    assert!(!file.exists(), "no file when sending over OTLP");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "nothing received");
    assert!(received.iter().all(|(path, _)| path == "/v1/traces"));
    let bodies: Vec<u8> = received.iter().flat_map(|(_, b)| b.clone()).collect();
    let service = b"traceq-demo";
    assert!(
        bodies.windows(service.len()).any(|w| w == service),
        "the resource's service.name is in the protobuf payload"
    );
}
