//! The h3-server example over XDP in a server namespace, fetched from a
//! client namespace by independent HTTP/3 clients: ngtcp2's gtlsclient
//! (Debian ngtcp2-client; it always exits 0, so the downloaded files are
//! compared byte for byte) and aioquic (PyPI). Namespaces are created and
//! removed by each test.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

mod support;

use datapath::testbed::{TestNet, TestNetConfig, privileged};

struct Server {
    child: Child,
    dir: PathBuf,
    /// The server's output after its "listening" line, once it exits.
    rest: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// The h3-server over XDP on the server side, serving a directory with a
/// small and a 3 MB file.
fn start_server(net: &TestNet, name: &str) -> Server {
    start_server_with(net, name, &[])
}

/// Like `start_server`, with more flags.
fn start_server_with(net: &TestNet, name: &str, extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("qx-interop-{name}-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"hello over HTTP/3\n").unwrap();
    // Never served: a dotfile, as a key or a .git directory would be.
    std::fs::write(root.join(".secret"), b"private").unwrap();
    std::fs::write(root.join("big.bin"), pattern(3_000_000, 7)).unwrap();
    let mut child = net
        .server
        .command(env!("CARGO_BIN_EXE_h3-server"))
        .args([
            "--interface",
            TestNet::SERVER_IF,
            "--mode",
            "xdp",
            "--port",
            "4433",
        ])
        .arg("--root")
        .arg(&root)
        .arg("--ca-out")
        .arg(dir.join("ca.pem"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, rest) = until_listening(child.stdout.take().unwrap());
    let server = Server {
        child,
        dir,
        rest: Some(rest),
    };
    assert!(
        lines.iter().any(|l| l.starts_with("mode: xdp")),
        "{lines:?}"
    );
    server
}

/// The server's output up to its "listening" line, and a thread that
/// reads the rest meanwhile (a server that exits normally prints its
/// counters, and a closed pipe would fail that).
fn until_listening(
    stdout: std::process::ChildStdout,
) -> (Vec<String>, std::thread::JoinHandle<Vec<String>>) {
    let mut reader = BufReader::new(stdout).lines();
    let lines = reader
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("listening"))
        .collect();
    let rest = std::thread::spawn(move || reader.map_while(Result::ok).collect());
    (lines, rest)
}

fn expected(path: &str, root: &Path) -> Vec<u8> {
    match path.strip_prefix("/bytes/") {
        Some(n) => {
            let n: usize = n.parse().unwrap();
            (0..n).map(|i| ((i % (64 * 1024)) % 251) as u8).collect()
        }
        None => std::fs::read(root.join(path.trim_start_matches('/'))).unwrap(),
    }
}

fn gtlsclient(net: &TestNet, out: &Path, extra: &[&str], paths: &[&str]) -> String {
    std::fs::create_dir_all(out).unwrap();
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("https://localhost:4433{p}"))
        .collect();
    let output = net
        .client
        .command("timeout")
        .args(["30", "gtlsclient", "--exit-on-all-streams-close"])
        .arg(format!("--download={}", out.display()))
        .args(extra)
        .args(["10.77.0.2", "4433"])
        .args(&urls)
        .output()
        .expect("gtlsclient (Debian package ngtcp2-client) must be installed");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn ngtcp2_client_downloads_byte_identical_and_resumes_with_0rtt() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let server = start_server(&net, "ngtcp2");
    let root = server.dir.join("root");
    let mut paths = vec!["/small.txt", "/big.bin", "/bytes/1000000"];
    // Many requests on one connection.
    let many: Vec<String> = (1..=30)
        .map(|i| format!("/bytes/{}", i * 1000 + i))
        .collect();
    paths.extend(many.iter().map(String::as_str));
    let out = server.dir.join("ngtcp2");
    gtlsclient(&net, &out, &["-q"], &paths);
    for path in &paths {
        let name = path.rsplit('/').next().unwrap();
        let got =
            std::fs::read(out.join(name)).unwrap_or_else(|_| panic!("{path} was not downloaded"));
        assert!(
            got == expected(path, &root),
            "{path}: {} bytes differ from the original",
            got.len()
        );
    }

    // Resumption: the second run resumes the first's session and sends its
    // request as 0-RTT data, which must not be rejected.
    let session = server.dir.join("session");
    let tp = server.dir.join("tp");
    let resume = [
        format!("--session-file={}", session.display()),
        format!("--tp-file={}", tp.display()),
    ];
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    gtlsclient(&net, &out.join("first"), &resume, &["/small.txt"]);
    let log = gtlsclient(&net, &out.join("second"), &resume, &["/small.txt"]);
    assert!(
        log.contains("type=0RTT"),
        "no 0-RTT packet sent on resumption"
    );
    assert!(
        !log.contains("Early data was rejected"),
        "the server rejected early data"
    );
    assert_eq!(
        std::fs::read(out.join("second/small.txt")).unwrap(),
        expected("/small.txt", &root)
    );
}

#[test]
fn aioquic_client_downloads_byte_identical_and_resumes_with_0rtt() {
    python_h3_client_downloads_byte_identical_and_resumes_with_0rtt("aioquic");
}

/// qh3, the aioquic fork behind niquests (its own TLS 1.3 and crypto).
#[test]
fn qh3_client_downloads_byte_identical_and_resumes_with_0rtt() {
    python_h3_client_downloads_byte_identical_and_resumes_with_0rtt("qh3");
}

fn python_h3_client_downloads_byte_identical_and_resumes_with_0rtt(lib: &str) {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let server = start_server(&net, lib);
    let root = server.dir.join("root");
    let mut paths = vec![
        "/small.txt".to_string(),
        "/big.bin".into(),
        "/bytes/2000000".into(),
    ];
    paths.extend((1..=40).map(|i| format!("/bytes/{}", i * 777)));
    let out = server.dir.join(lib);
    let report = aioquic(&net, &server, lib, &out, &paths, false);
    for (i, path) in paths.iter().enumerate() {
        let got = std::fs::read(out.join(i.to_string())).unwrap();
        assert!(
            got == expected(path, &root),
            "{path}: {} bytes differ from the original ({report})",
            got.len()
        );
    }
    assert_eq!(report["responses"].as_array().unwrap().len(), paths.len());
    assert!(
        report["responses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 200),
        "{report}"
    );

    // Resumption with 0-RTT: the second connection's requests go out as
    // early data, which the server accepts.
    let paths = ["/small.txt".to_string(), "/bytes/100000".into()];
    let out = server.dir.join(format!("{lib}-0rtt"));
    let report = aioquic(&net, &server, lib, &out, &paths, true);
    assert_eq!(report["session_resumed"], true, "{report}");
    assert_eq!(report["early_data_accepted"], true, "{report}");
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(
            std::fs::read(out.join(i.to_string())).unwrap(),
            expected(path, &root),
            "{path}"
        );
    }
}

/// Runs the aioquic client script (with aioquic or qh3) from the client
/// namespace; its JSON report.
fn aioquic(
    net: &TestNet,
    server: &Server,
    lib: &str,
    out: &Path,
    paths: &[String],
    resume: bool,
) -> serde_json::Value {
    let mut args: Vec<OsString> = vec![out.into()];
    args.extend(paths.iter().map(OsString::from));
    args.extend(resume.then(|| "--resume".into()));
    args.extend(["--lib".into(), lib.into()]);
    python_client(net, server, "aioquic_get.py", lib, 60, &args)
}

/// Runs `interop/SCRIPT HOST PORT CA ARGS...` with the interop venv's
/// Python (QUIC_XDP_PYTHON) from the client namespace; its JSON report.
fn python_client(
    net: &TestNet,
    server: &Server,
    script: &str,
    package: &str,
    timeout_secs: u32,
    args: &[OsString],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(script);
    let output = net
        .client
        .command("timeout")
        .arg(timeout_secs.to_string())
        .arg(std::env::var_os("QUIC_XDP_PYTHON").unwrap_or("python3".into()))
        .arg(&script)
        .args(["10.77.0.2", "4433"])
        .arg(server.dir.join("ca.pem"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed (python3 with {package} installed, see scripts/test.sh): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

#[test]
fn curl_client_gets_every_response_on_one_session() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let server = start_server(&net, "curl");
    let root = server.dir.join("root");
    let mut gets = vec![
        "/small.txt".to_string(),
        "/big.bin".into(),
        "/bytes/0".into(),
        "/bytes/1".into(),
        "/bytes/5000000".into(),
    ];
    // Many requests on one connection (libcurl keeps it between requests).
    gets.extend((1..=20).map(|i| format!("/bytes/{}", i * 1313)));
    let mut specs: Vec<String> = gets.iter().map(|p| format!("GET:{p}")).collect();
    specs.extend([
        "GET:/missing".into(),
        "HEAD:/small.txt".into(),
        "GET:/.secret".into(),
        "POST:/small.txt".into(),
    ]);
    let report = curl(&net, &server, &specs);
    let responses = report["responses"].as_array().unwrap();
    assert_eq!(responses.len(), specs.len(), "{report}");
    for (path, r) in gets.iter().zip(responses) {
        let want = expected(path, &root);
        assert!(r["error"].is_null(), "{path}: {}", r["error"]);
        assert_eq!(r["status"], 200, "{path}: {r}");
        assert_eq!(r["http_version"], 30, "{path} not over HTTP/3: {r}");
        assert_eq!(r["length"], want.len(), "{path}: {r}");
        assert_eq!(r["sha256"], sha256_hex(&want), "{path}: body differs");
    }
    assert_eq!(
        responses[0]["content_type"], "text/plain",
        "{}",
        responses[0]
    );
    let missing = &responses[gets.len()];
    assert_eq!(missing["status"], 404, "{missing}");
    // HEAD: the GET's headers, no body.
    let head = &responses[gets.len() + 1];
    assert_eq!(head["status"], 200, "{head}");
    assert_eq!(head["length"], 0, "{head}");
    let small = expected("/small.txt", &root).len().to_string();
    assert_eq!(head["content_length"], small.as_str(), "{head}");
    let hidden = &responses[gets.len() + 2];
    assert_eq!(hidden["status"], 404, "a dotfile was served: {hidden}");
    let post = &responses[gets.len() + 3];
    assert_eq!(post["status"], 405, "{post}");
    assert_eq!(post["allow"], "GET, HEAD", "{post}");
}

/// Runs the libcurl (curl_cffi) client script from the client namespace;
/// its JSON report.
fn curl(net: &TestNet, server: &Server, specs: &[String]) -> serde_json::Value {
    let args: Vec<OsString> = specs.iter().map(OsString::from).collect();
    python_client(net, server, "curl_get.py", "curl_cffi", 120, &args)
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `--user`: once XDP is attached and the sockets are open, h3-server runs
/// as nobody with only CAP_BPF and CAP_NET_ADMIN (bounding set included;
/// its engine threads with none effective), still serves over XDP, and
/// still detaches XDP when stopped.
#[test]
fn h3_server_drops_to_a_user_and_keeps_serving() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let mut server = start_server_with(
        &net,
        "user",
        &["--user", "nobody", "--metrics", "10.77.0.2:9464"],
    );
    let pid = server.child.id();
    let status = |task: &str| std::fs::read_to_string(format!("/proc/{pid}/{task}status")).unwrap();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let main = status("");
    assert_eq!(field(&main, "Uid"), "65534 65534 65534 65534", "{main}");
    assert_eq!(field(&main, "Gid"), "65534 65534 65534 65534", "{main}");
    // CAP_NET_ADMIN (12) and CAP_BPF (39), nothing else.
    let kept = format!("{:016x}", (1u64 << 12) | (1u64 << 39));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(&main, set), kept, "{set}: {main}");
    }
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        if comm.starts_with("quic-xdp-engine") {
            let s = std::fs::read_to_string(task.join("status")).unwrap();
            assert_eq!(
                field(&s, "CapEff"),
                "0000000000000000",
                "engine thread: {s}"
            );
        }
    }
    let report = curl(
        &net,
        &server,
        &["GET:/small.txt".into(), "GET:/bytes/300000".into()],
    );
    for r in report["responses"].as_array().unwrap() {
        assert_eq!(r["status"], 200, "{r}");
    }
    // The metrics, scraped over TCP from the client side: the XDP verdicts
    // still readable after the privilege drop, the AF_XDP queue counting.
    let scrape = net
        .client
        .command("curl")
        .args(["-sf", "http://10.77.0.2:9464/metrics"])
        .output()
        .unwrap();
    assert!(scrape.status.success(), "{scrape:?}");
    let metrics = String::from_utf8(scrape.stdout).unwrap();
    let redirected = r#"quic_xdp_xdp_verdicts_total{reason="redirected"}"#;
    assert!(support::value(&metrics, redirected) > 0.0, "{metrics}");
    let rx = format!(
        r#"quic_xdp_datapath_rx_packets_total{{kind="xsk",queue="{}/0"}}"#,
        TestNet::SERVER_IF
    );
    assert!(support::value(&metrics, &rx) > 0.0, "{metrics}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!net.server_xdp_attached(), "XDP still attached after exit");
}

/// The systemd unit's capabilities are enough: h3-server started as a
/// non-root user with exactly its AmbientCapabilities (and that bounding
/// set) loads XDP, serves over it, and detaches when stopped.
#[test]
fn the_systemd_units_capabilities_suffice() {
    if !privileged() {
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/h3-server.service"),
    )
    .unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let caps = caps.join(",");
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("qx-unit-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"hello over HTTP/3\n").unwrap();
    let certs = certs::DevCerts::localhost().unwrap();
    certs.write_pem(&dir).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        let mode = if f.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let mut child = net
        .server
        .command("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(env!("CARGO_BIN_EXE_h3-server"))
        .args([
            "--interface",
            TestNet::SERVER_IF,
            "--mode",
            "xdp",
            "--port",
            "4433",
        ])
        .arg("--root")
        .arg(&root)
        .arg("--cert")
        .arg(dir.join(certs::CERT_FILE))
        .arg("--key")
        .arg(dir.join(certs::KEY_FILE))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let (head, rest) = until_listening(child.stdout.take().unwrap());
    let server = Server {
        child,
        dir,
        rest: Some(rest),
    };
    assert!(
        head.iter().any(|l| l.starts_with("mode: xdp")),
        "not serving over XDP with the unit's capabilities {caps}: {head:?}"
    );
    // curl() trusts <dir>/ca.pem: certs::CA_FILE.
    let report = curl(&net, &server, &["GET:/small.txt".into()]);
    assert_eq!(report["responses"][0]["status"], 200, "{report}");
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    assert!(!net.server_xdp_attached(), "XDP still attached after exit");
}

/// SIGTERM under load: h3-server refuses new connections, sends GOAWAY,
/// lets every request it accepted finish, closes with H3_NO_ERROR and
/// exits with its UMEM frames back. The load generator (h3-load, quinn +
/// h3) sees no request fail once sent; only requests GOAWAY told it not
/// to send, or rejected unprocessed (both safe to retry, RFC 9114 5.2).
#[test]
fn h3_server_drains_gracefully_under_load() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let server = start_server_with(&net, "drain", &["--drain-timeout", "20"]);
    let ca = server.dir.join("ca.pem");
    let h3_load = |extra: &[&str]| {
        let mut command = net.client.command(env!("CARGO_BIN_EXE_h3-load"));
        command
            .args(["--connect", "10.77.0.2:4433", "--json", "-", "--quiet"])
            .arg("--ca")
            .arg(&ca)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let load = h3_load(&[
        "https://localhost:4433/bytes/200000",
        "https://localhost:4433/big.bin",
        "-c",
        "8",
        "-m",
        "8",
        "-d",
        "60",
        "--timeout",
        "30",
    ])
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let late = h3_load(&["https://localhost:4433/small.txt", "-n", "1"])
        .output()
        .unwrap();
    let late_err = String::from_utf8_lossy(&late.stderr);
    assert!(
        !late.status.success() && late_err.contains("refused"),
        "a new connection during the drain was not refused: {late_err}"
    );

    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find("\n{").unwrap() + 1..])
            .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(summary["requests_ok"].as_u64().unwrap() > 0, "{summary}");
    for (kind, n) in summary["errors"].as_object().unwrap() {
        assert!(
            kind.starts_with("not sent: server going away") || kind.starts_with("rejected"),
            "{n} requests failed once sent ({kind}): {summary}"
        );
    }

    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    let output = server.rest.take().unwrap().join().unwrap();
    assert!(output.iter().any(|l| l == "drained"), "{output:?}");
    assert!(
        output.iter().all(|l| !l.contains("frames_in_use=")),
        "UMEM frames still in use at exit: {output:?}"
    );
    assert!(!net.server_xdp_attached(), "XDP still attached after exit");
}

/// A page for a browser: a stylesheet, a script and an image as
/// subresources; the script writes what it saw (the image's size, the
/// style applied, the protocol of the page's load) into the DOM.
const PAGE: &[(&str, &str)] = &[
    (
        "index.html",
        r#"<!doctype html>
<html><head><title>quic-xdp</title><link rel="stylesheet" href="style.css"></head>
<body><h1 id="result">waiting</h1><img id="picture" src="picture.svg">
<script src="app.js"></script></body></html>
"#,
    ),
    (
        "style.css",
        "body { background: rgb(10, 120, 200); margin: 0; }\nimg { display: block; }\n",
    ),
    (
        "app.js",
        r#"window.addEventListener('load', () => {
  const img = document.getElementById('picture');
  const protocol = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  const background = getComputedStyle(document.body).backgroundColor;
  document.getElementById('result').textContent =
    `loaded over ${protocol}: image ${img.naturalWidth}x${img.naturalHeight}, background ${background}`;
});
"#,
    ),
    (
        "picture.svg",
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100"><rect width="200" height="100" fill="rgb(230, 20, 20)"/></svg>"#,
    ),
];

/// Debian's Chromium, headless in the client namespace (quic-xdp.test
/// resolving to the server, the leaf's SPKI pinned), with `flags`, on
/// `url`; what it printed.
fn chromium(net: &TestNet, spki: &str, profile: &Path, flags: &[&str], url: &str) -> String {
    let out = chromium_once(net, spki, profile, flags, url);
    if !out.trim().is_empty() || !flags.contains(&"--dump-dom") {
        return out;
    }
    // Headless Chromium now and then exits 0 without dumping the DOM
    // (seen once in CI, not reproduced). A second empty dump fails the
    // test; the retry gets a fresh profile, so that it starts from the
    // same state (no Alt-Svc remembered).
    eprintln!("chromium printed nothing; running it once more");
    let retry = profile.with_extension("retry");
    chromium_once(net, spki, &retry, flags, url)
}

fn chromium_once(net: &TestNet, spki: &str, profile: &Path, flags: &[&str], url: &str) -> String {
    let output = net
        .client
        .command("timeout")
        .args([
            "60",
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args([
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-quic",
            "--host-resolver-rules=MAP quic-xdp.test 10.77.0.2",
            "--window-size=640,480",
        ])
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(flags)
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium) must be installed");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if output.stdout.is_empty() {
        eprintln!(
            "chromium's stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// h3-server for a browser: a certificate for quic-xdp.test (its files in
/// the server's directory, removed with it), and `extra` flags.
fn browser_server(net: &TestNet, name: &str, extra: &[&str]) -> (Server, certs::DevCerts) {
    let pki = std::env::temp_dir().join(format!("qx-interop-{name}-{}", std::process::id()));
    let certs = certs::DevCerts::generate(&["quic-xdp.test".into()]).unwrap();
    certs.write_pem(&pki).unwrap();
    let (cert, key) = (pki.join(certs::CERT_FILE), pki.join(certs::KEY_FILE));
    let mut args = vec![
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (start_server_with(net, name, &args), certs)
}

/// Base64 SHA-256 of the leaf's SPKI: what Chromium pins.
fn spki_pin(certs: &certs::DevCerts) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, &certs.leaf_spki_der());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Debian's Chromium, headless in the client namespace, with QUIC forced
/// for the origin: the page and its subresources load over HTTP/3 from
/// h3-server over XDP; the DOM shows the script ran with the image and
/// the stylesheet applied, and a screenshot shows both.
#[test]
fn chromium_loads_a_page_with_subresources_over_http3() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let (server, certs) = browser_server(&net, "chromium", &[]);
    let root = server.dir.join("root");
    for (name, body) in PAGE {
        std::fs::write(root.join(name), body).unwrap();
    }
    let spki = spki_pin(&certs);
    let profile = server.dir.join("chromium-profile");
    let shot = server.dir.join("shot.png");
    let chromium = |mode: &[&str]| {
        let mut flags = vec![
            "--origin-to-force-quic-on=quic-xdp.test:4433",
            "--virtual-time-budget=10000",
        ];
        flags.extend_from_slice(mode);
        chromium(
            &net,
            &spki,
            &profile,
            &flags,
            "https://quic-xdp.test:4433/index.html",
        )
    };

    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.contains("loaded over h3: image 200x100, background rgb(10, 120, 200)"),
        "{dom}"
    );
    chromium(&[&format!("--screenshot={}", shot.display())]);
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("a screenshot"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let rgb = |i: usize| {
        let p = &pixels[i * channels..i * channels + 3];
        (p[0], p[1], p[2])
    };
    let total = (frame.width * frame.height) as usize;
    let count = |want: (u8, u8, u8)| (0..total).filter(|&i| rgb(i) == want).count();
    // The background fills most of the page; the image 200x100 of it.
    let background = count((10, 120, 200));
    let picture = count((230, 20, 20));
    assert!(background > total / 3, "background {background} of {total}");
    assert!(
        (15_000..=25_000).contains(&picture),
        "image pixels {picture} of {total}"
    );
}

/// A page that fetches a fresh URL of its origin every 200 ms until one
/// arrives over HTTP/3, and lists the protocol of the page and of each
/// fetch. (Not reloads: a reload revalidates the cached page, and Chromium
/// reports the protocol of the response it cached.)
const DISCOVERY_PAGE: &str = r#"<!doctype html>
<html><body><h1 id="result">waiting</h1><script>
const seen = [performance.getEntriesByType('navigation')[0].nextHopProtocol];
const show = () => {
  document.getElementById('result').textContent = 'protocols: ' + seen.join(',');
};
const sleep = ms => new Promise(done => setTimeout(done, ms));
async function probe() {
  for (let n = 1; n <= 30; n++) {
    const url = new URL('index.html?probe=' + n, location).href;
    try {
      await (await fetch(url, { cache: 'no-store' })).text();
    } catch (e) {
      // Recorded, and the test allows one: the browser may lose a
      // request while it switches protocols.
      seen.push('error ' + e);
      show();
      await sleep(200);
      continue;
    }
    let entry;
    while (!(entry = performance.getEntriesByName(url)[0])) await sleep(20);
    seen.push(entry.nextHopProtocol);
    show();
    if (entry.nextHopProtocol === 'h3') return;
    await sleep(200);
  }
}
show();
probe().catch(e => { seen.push('error ' + e); show(); });
</script></body></html>
"#;

/// HTTP/3 discovered as on the web: h3-server with --tcp, Chromium told
/// nothing about QUIC for the origin. The first load goes over TCP and
/// brings Alt-Svc; a later one goes over HTTP/3. (Chromium uses QUIC for
/// a certificate from a private CA only for hosts named in
/// --origin-to-force-quic-on, but it matches that list by host for the
/// certificate and by host and port for forcing: forcing port 1, which
/// nothing here uses, lets quic-xdp.test:4433 take the Alt-Svc path.)
#[test]
fn chromium_discovers_http3_through_alt_svc() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let (server, certs) = browser_server(&net, "altsvc", &["--tcp"]);
    std::fs::write(server.dir.join("root/index.html"), DISCOVERY_PAGE).unwrap();
    let dom = chromium(
        &net,
        &spki_pin(&certs),
        &server.dir.join("chromium-profile"),
        &[
            "--origin-to-force-quic-on=quic-xdp.test:1",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ],
        "https://quic-xdp.test:4433/index.html",
    );
    let protocols: Vec<&str> = dom
        .split("protocols: ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no result in {dom}"))
        .split(',')
        .collect();
    assert_eq!(
        protocols.first(),
        Some(&"h2"),
        "first load over TCP: {protocols:?}"
    );
    assert_eq!(protocols.last(), Some(&"h3"), "then HTTP/3: {protocols:?}");
    // CI saw one probe fail once ("TypeError: Failed to fetch") before any
    // answer over HTTP/3; not reproduced in 15 runs, under load either.
    let failed = protocols.iter().filter(|p| p.starts_with("error")).count();
    eprintln!("protocols seen: {protocols:?}");
    assert!(failed <= 1, "requests failed: {protocols:?}");

    // The server's own counters agree: requests over TCP, and QUIC
    // connections accepted.
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    let output = server.rest.take().unwrap().join().unwrap();
    let number_after = |prefix: &str, word: &str| -> u64 {
        let line = output
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {output:?}"));
        let mut words = line.split_whitespace();
        words.find(|w| *w == word);
        words.next().unwrap().parse().unwrap()
    };
    assert!(number_after("tcp:", "requests") >= 1, "{output:?}");
    assert!(number_after("connections:", "accepted") >= 1, "{output:?}");
}

/// h3-load --xdp: the load generator's quinn on AF_XDP in the client
/// namespace, against h3-server over XDP: every request answered.
#[test]
fn h3_load_over_xdp_against_h3_server_over_xdp() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let server = start_server(&net, "load-xdp");
    let out = net
        .client
        .command(env!("CARGO_BIN_EXE_h3-load"))
        .args([
            "https://localhost:4433/bytes/100000",
            "https://localhost:4433/small.txt",
            "--connect",
            "10.77.0.2:4433",
            "--xdp",
            TestNet::CLIENT_IF,
            "-c",
            "4",
            "-m",
            "8",
            "-n",
            "400",
            "--json",
            "-",
            "--quiet",
        ])
        .arg("--ca")
        .arg(server.dir.join("ca.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find("\n{").unwrap() + 1..]).unwrap();
    assert_eq!(summary["requests_ok"], 400, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
}

/// `--pcap`: what tcpdump cannot see. h3-server over XDP writes every
/// datagram it receives and sends; after a download and a graceful stop
/// the file holds well-formed Ethernet/IP/UDP frames both ways, with the
/// client's and the server's addresses and the QUIC port.
#[test]
fn h3_server_captures_its_traffic_to_pcap() {
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let pcap = std::env::temp_dir().join(format!("qx-capture-{}.pcap", std::process::id()));
    let mut server = start_server_with(&net, "pcap", &["--pcap", pcap.to_str().unwrap()]);
    let report = curl(&net, &server, &["GET:/big.bin".into()]);
    assert_eq!(report["responses"][0]["status"], 200, "{report}");
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(server.child.wait().unwrap().success());

    let file = std::fs::File::open(&pcap).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let (client, server_ip) = (
        std::net::IpAddr::from(TestNet::CLIENT_V4),
        std::net::IpAddr::from(TestNet::SERVER_V4),
    );
    let (mut received, mut sent, mut sent_bytes) = (0, 0, 0);
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        let d =
            datapath::wire::parse_udp_frame(&packet.data, datapath::wire::ChecksumPolicy::Verify)
                .expect("a well-formed UDP frame");
        if d.dst.port() == 4433 {
            assert_eq!((d.src.ip(), d.dst.ip()), (client, server_ip));
            received += 1;
        } else {
            assert_eq!(d.src.port(), 4433);
            assert_eq!((d.src.ip(), d.dst.ip()), (server_ip, client));
            sent += 1;
            sent_bytes += d.payload.len();
        }
    }
    assert!(received > 10, "{received} frames received");
    // The 3 MB file went out in the captured frames.
    assert!(
        sent_bytes > 3_000_000,
        "{sent} frames, {sent_bytes} bytes sent"
    );
    std::fs::remove_file(pcap).unwrap();
}
