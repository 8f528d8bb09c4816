//! The h3-load tool against the h3-server example on loopback (kernel
//! UDP: no privileges needed): counts, JSON summary, errors by kind.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16, dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_h3-server"))
        .args([
            "--address",
            "127.0.0.1",
            "--mode",
            "udp",
            "--port",
            &port.to_string(),
        ])
        .arg("--root")
        .arg(dir)
        .arg("--ca-out")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().starts_with("listening") {
            break;
        }
    }
    server
}

fn load(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_h3-load"))
        .args(args)
        .args(["--json", "-", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = &stdout[stdout.find('{').expect("a JSON summary")..];
    (out.status.success(), serde_json::from_str(json).unwrap())
}

#[test]
fn counts_requests_and_errors_by_kind() {
    let dir = std::env::temp_dir().join(format!("qx-h3load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>hi</h1>").unwrap();
    let port = 47_000 + (std::process::id() % 1000) as u16;
    let _server = start_server(port, &dir);
    let base = format!("https://localhost:{port}");
    let connect = format!("127.0.0.1:{port}");
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (ok, s) = load(&[
        &format!("{base}/bytes/5000"),
        &format!("{base}/index.html"),
        "--connect",
        &connect,
        "--ca",
        ca,
        "-c",
        "3",
        "-m",
        "5",
        "-n",
        "300",
        "-d",
        "30",
    ]);
    assert!(ok, "{s}");
    assert_eq!(s["requests_ok"], 300, "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["bytes_per_s"].as_f64().unwrap() > 0.0, "{s}");

    // Open loop at a fixed rate, trusting any certificate.
    let (ok, s) = load(&[
        &format!("https://127.0.0.1:{port}/bytes/10"),
        "--insecure",
        "--rate",
        "200",
        "-d",
        "1",
    ]);
    assert!(ok, "{s}");
    let done = s["requests_ok"].as_u64().unwrap();
    assert!(
        (150..=260).contains(&done),
        "about 200 requests in 1 s at 200/s: {s}"
    );

    // Failures are counted by kind and fail the run.
    let (ok, s) = load(&[
        &format!("{base}/missing"),
        "--connect",
        &connect,
        "--ca",
        ca,
        "-n",
        "7",
    ]);
    assert!(!ok);
    assert_eq!(s["errors"]["status 404"], 7, "{s}");
    std::fs::remove_dir_all(dir).unwrap();
}
