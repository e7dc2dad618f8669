//! The engine on WebGPU in a real browser: `tools/build-web` builds the
//! page, a local server serves it, and headless Chromium runs it on
//! SwiftShader's Vulkan (flags from `WEBGPU.md`); the page logs one console
//! line that the test reads from Chromium's stderr.
//!
//! Needs the wasm32 target, the pinned wasm-bindgen CLI and `chromium`.
//! Where one is missing the test says `NOT RUN: …` on stderr, or fails when
//! `CMAE_REQUIRE_WEB` is set (CI installs all three).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Why the web tests cannot run here, if they cannot.
fn missing_tool() -> Option<String> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if !installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown")) {
        return Some("the wasm32 target (rustup target add wasm32-unknown-unknown)".into());
    }
    if Command::new("wasm-bindgen").arg("--version").output().is_err() {
        return Some("the wasm-bindgen CLI (cargo install wasm-bindgen-cli --version 0.2.130)".into());
    }
    if Command::new("chromium").arg("--version").output().is_err() {
        return Some("Chromium (apt-get install chromium)".into());
    }
    None
}

fn can_run() -> bool {
    let Some(missing) = missing_tool() else {
        return true;
    };
    assert!(std::env::var_os("CMAE_REQUIRE_WEB").is_none(), "CMAE_REQUIRE_WEB is set but {missing} is missing");
    let _ = writeln!(std::io::stderr(), "NOT RUN: the browser tests need {missing}");
    false
}

/// The site, built once per test process.
fn site() -> &'static Path {
    static SITE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SITE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cmae-web-site-{}", std::process::id()));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new(root.join("tools/build-web")).arg(&dir).output().unwrap();
        assert!(out.status.success(), "tools/build-web failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// Serves `dir` on 127.0.0.1 (any free port) from a background thread.
fn serve(dir: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = String::new();
            if BufReader::new(&mut stream).read_line(&mut request).is_err() {
                continue;
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/");
            let file = dir.join(path.trim_start_matches('/'));
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html",
                Some("js") => "text/javascript",
                Some("wasm") => "application/wasm",
                _ => "application/octet-stream",
            };
            let _ = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&body)),
                _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    port
}

/// Loads the page in headless Chromium (with or without WebGPU) and returns
/// the first `cmae-web` console line.
fn page_line(webgpu: bool) -> String {
    let port = serve(site());
    let profile = std::env::temp_dir().join(format!("cmae-web-profile-{}-{webgpu}", std::process::id()));
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--enable-logging=stderr".into(),
        "--v=0".into(),
        "--remote-debugging-port=0".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    if webgpu {
        for flag in ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"] {
            args.push(flag.into());
        }
    }
    args.push(format!("http://127.0.0.1:{port}/index.html"));
    let mut chromium =
        Command::new("chromium").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = chromium.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut reader = BufReader::new(&mut stderr);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(at) = line.find("\"cmae-web ") {
                let text = &line[at + 1..];
                let _ = tx.send(Ok(text[..text.rfind("\", source").unwrap_or(text.len())].to_string()));
                return;
            }
            all.push_str(&line);
            line.clear();
        }
        let _ = reader.read_to_string(&mut all);
        let _ = tx.send(Err(all));
    });
    let got = rx.recv_timeout(Duration::from_secs(180));
    let _ = chromium.kill();
    let _ = chromium.wait();
    let _ = std::fs::remove_dir_all(&profile);
    match got {
        Ok(Ok(line)) => line.replace("\\\"", "\""),
        Ok(Err(log)) => panic!("Chromium exited without a cmae-web line:\n{log}"),
        Err(_) => panic!("no cmae-web line within 180 s"),
    }
}

#[test]
fn the_engine_computes_on_webgpu_in_headless_chromium() {
    if !can_run() {
        return;
    }
    let line = page_line(true);
    let json = line.strip_prefix("cmae-web smoke ").unwrap_or_else(|| panic!("{line}"));
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["backend"], "BrowserWebGpu", "{report}");
    let error = report["matmul_max_error"].as_f64().unwrap();
    assert!(error < 1e-6, "{report}");
    // The same product natively on this machine's adapter: the two agree.
    let native = pollster::block_on(async { cmae_web::smoke(&cmae_web::open().await?).await }).unwrap();
    assert_eq!(report["matmul_shape"], native["matmul_shape"]);
    let (web, here) = (report["matmul_abs_sum"].as_f64().unwrap(), native["matmul_abs_sum"].as_f64().unwrap());
    assert!((web - here).abs() <= 1e-6 * here, "browser {web}, native {here}");
}

#[test]
fn a_browser_without_webgpu_gets_one_sentence_saying_what_to_do() {
    if !can_run() {
        return;
    }
    assert_eq!(
        page_line(false),
        "cmae-web error this browser gives no WebGPU adapter: open the page in a current Chrome, Edge or Safari (or Firefox with WebGPU enabled) on a machine with a GPU driver"
    );
}
