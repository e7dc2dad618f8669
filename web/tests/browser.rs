//! cmae in a real browser: `tools/build-web` builds the site, a local server
//! serves it, and headless Chromium runs it on SwiftShader's Vulkan (flags
//! from `WEBGPU.md`); the page logs `cmae-web …` console lines that the
//! tests read from Chromium's stderr and check against this machine's own
//! adapter (lavapipe in CI) running the same checkpoint, image and masks.
//!
//! Needs the wasm32 target, the pinned wasm-bindgen CLI and `chromium`.
//! Where one is missing the test says `NOT RUN: …` on stderr, or fails when
//! `CMAE_REQUIRE_WEB` is set (CI installs all three).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cmae_engine::Device;
use cmae_viewer::worker::{Job, Picture, Reply, Source, Worker};
use serde_json::Value;

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
                Some("png") => "image/png",
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

/// The flags that give headless Chromium WebGPU on SwiftShader's Vulkan,
/// with the canvas composited through Vulkan too (else WebGPU canvases
/// cannot be presented and the device is lost): see `WEBGPU.md`.
const WEBGPU_FLAGS: [&str; 8] = [
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--enable-gpu",
];

/// What a page said: its `cmae-web KIND …` lines by KIND (`result`,
/// `trained`, `screenshot`, `smoke`, `error`), and where its downloads went.
struct PageRun {
    lines: HashMap<String, String>,
    downloads: PathBuf,
}

impl PageRun {
    /// The JSON after `cmae-web KIND `.
    fn json(&self, kind: &str) -> Value {
        let line = self.lines.get(kind).unwrap_or_else(|| panic!("no cmae-web {kind} line: {:?}", self.lines));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("cmae-web {kind} {line}: {e}"))
    }
}

/// Loads `page` (path and query) in headless Chromium, with or without
/// WebGPU, until it has logged a line of each of `kinds` (or an error).
fn run_page(page: &str, webgpu: bool, kinds: &[&str], timeout: Duration) -> PageRun {
    // One browser at a time: several SwiftShader GPUs on two cores time out.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = serve(site());
    let tag = format!("{}-{}", std::process::id(), RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let profile = std::env::temp_dir().join(format!("cmae-web-profile-{tag}"));
    let downloads = std::env::temp_dir().join(format!("cmae-web-downloads-{tag}"));
    let _ = std::fs::remove_dir_all(&downloads);
    std::fs::create_dir_all(profile.join("Default")).unwrap();
    std::fs::create_dir_all(&downloads).unwrap();
    let prefs = serde_json::json!({"download": {"default_directory": downloads, "prompt_for_download": false}});
    std::fs::write(profile.join("Default/Preferences"), prefs.to_string()).unwrap();
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--enable-logging=stderr".into(),
        "--v=0".into(),
        "--window-size=1280,800".into(),
        "--remote-debugging-port=0".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    if webgpu {
        args.extend(WEBGPU_FLAGS.map(String::from));
    }
    args.push(format!("http://127.0.0.1:{port}/{page}"));
    let mut chromium =
        Command::new("chromium").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = chromium.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(&mut stderr);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(at) = line.find("\"cmae-web ") {
                let text = &line[at + 1..];
                let text = text[..text.rfind("\", source").unwrap_or(text.len())].replace("\\\"", "\"");
                let _ = tx.send(Ok(text));
            } else if line.contains("CONSOLE") || line.contains("FATAL") {
                let _ = tx.send(Err(line.clone()));
            }
            line.clear();
        }
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        let _ = tx.send(Err(format!("Chromium exited: {rest}")));
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut lines = HashMap::new();
    let mut log = String::new();
    while !kinds.iter().all(|k| lines.contains_key(*k)) && !lines.contains_key("error") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(text)) => {
                let rest = text.strip_prefix("cmae-web ").unwrap();
                let (kind, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                lines.insert(kind.to_string(), payload.to_string());
            }
            Ok(Err(other)) => log.push_str(&other),
            Err(_) => break,
        }
    }
    let _ = chromium.kill();
    let _ = chromium.wait();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        kinds.iter().all(|k| lines.contains_key(*k)) || lines.contains_key("error"),
        "{page}: no {kinds:?} lines within {timeout:?}; got {lines:?}\n{log}"
    );
    PageRun { lines, downloads }
}

fn assert_close(what: &str, page: f64, native: f64) {
    assert!((page - native).abs() <= 1e-4 * native.abs().max(1e-6), "{what}: page {page}, native {native}");
}

fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(numbers).collect(),
        other => vec![other.as_f64().unwrap_or_else(|| panic!("{other} is not a number"))],
    }
}

/// `cmae reconstruct --json`'s numbers for the same checkpoint, image, shots and seed.
fn native_reconstruction(checkpoint: &Path, image: &Path, shots: Option<&str>, seed: u64) -> Value {
    let dev = Device::from_env().unwrap();
    let f = cmae::train::recon::reconstruct_files(&dev, checkpoint, &[image.to_path_buf()], shots, seed).unwrap();
    f.result.report(&f.shots, seed, &dev.info().name)
}

/// The page's numbers equal the native ones, within 1e-4 relative.
fn assert_same_reconstruction(page: &Value, native: &Value) {
    assert_eq!((&page["shots"], &page["seed"]), (&native["shots"], &native["seed"]));
    assert_close("loss", page["loss"].as_f64().unwrap(), native["loss"].as_f64().unwrap());
    for key in ["per_image", "patch_loss"] {
        let (p, n) = (numbers(&page[key]), numbers(&native[key]));
        assert_eq!(p.len(), n.len(), "{key}");
        for (a, b) in p.iter().zip(&n) {
            assert_close(key, *a, *b);
        }
    }
}

/// Standard base64, as in a `data:` URL.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{} is not base64", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
            n.to_be_bytes()[1..c.len()].to_vec()
        })
        .collect()
}

#[test]
fn the_engine_computes_on_webgpu_in_headless_chromium() {
    if !can_run() {
        return;
    }
    let run = run_page("smoke.html", true, &["smoke"], Duration::from_secs(180));
    let report = run.json("smoke");
    assert_eq!(report["backend"], "BrowserWebGpu", "{report}");
    let error = report["matmul_max_error"].as_f64().unwrap();
    assert!(error < 1e-6, "{report}");
    // The same product natively on this machine's adapter: the two agree.
    let native = pollster::block_on(async { cmae_web::smoke(&cmae_web::open().await?).await }).unwrap();
    assert_eq!(report["matmul_shape"], native["matmul_shape"]);
    let (web, here) = (report["matmul_abs_sum"].as_f64().unwrap(), native["matmul_abs_sum"].as_f64().unwrap());
    assert!((web - here).abs() <= 1e-6 * here, "browser {web}, native {here}");
}

/// The viewer in the page, on the bundled checkpoint with a bundled image,
/// shots and seed from the URL: its reconstruction losses equal `cmae
/// reconstruct`'s, its cls attention map the desktop viewer's, and the
/// page shows the panel.
#[test]
fn the_page_viewer_shows_the_numbers_of_cmae_reconstruct_and_the_desktop_viewer() {
    if !can_run() {
        return;
    }
    let (shots, seed, image) = ("0:0.75,4:0.3", 5, "assets/fmnist-test-2.png");
    let page = format!("index.html?image={image}&shots={shots}&seed={seed}");
    let run = run_page(&page, true, &["result", "screenshot"], Duration::from_secs(300));
    let result = run.json("result");
    assert!(!run.lines.contains_key("error"), "{:?}", run.lines);
    let (checkpoint, image) = (site().join(cmae_web::BUNDLED_CHECKPOINT), site().join(image));
    assert_same_reconstruction(&result, &native_reconstruction(&checkpoint, &image, Some(shots), seed));
    assert_eq!(result["adapter"], "WebGPU adapter (name hidden by the browser)");

    // The desktop viewer's model side, on this machine's adapter.
    let mut worker = Worker::start(Device::from_env().unwrap(), || {});
    let layer = result["attention_layer"].as_u64().unwrap() as usize;
    worker.send(Job::Load(Source::Path(checkpoint)));
    worker.send(Job::Picture(Picture::File(Source::Path(image))));
    worker.send(Job::Attention { layer, head: None, query: None });
    let native = loop {
        match worker.rx.recv_timeout(Duration::from_secs(120)).unwrap() {
            Reply::Attention { weights, .. } => break weights,
            Reply::Error(e) => panic!("{e}"),
            _ => {}
        }
    };
    let page_map = numbers(&result["cls_attention"]);
    assert_eq!(page_map.len(), native.len());
    for (a, b) in page_map.iter().zip(&native) {
        assert_close("cls attention", *a, *b);
    }

    // A picture of the page: the viewer drawn, not blank and not an error.
    let png = run.lines["screenshot"].strip_prefix("data:image/png;base64,").expect("a PNG data URL");
    let shot = image::load_from_memory(&base64_decode(png)).unwrap().to_rgb8();
    let picture = std::env::temp_dir().join(format!("cmae-web-page-{}.png", std::process::id()));
    shot.save(&picture).unwrap();
    eprintln!("the page: {}", picture.display());
    let (width, height) = shot.dimensions();
    assert!(width == 1280 && height > 400, "a {width}×{height} canvas");
    let colours: std::collections::HashSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "{} colours: a blank page", colours.len());
    // The reconstruction panel (the right part) holds the grid's picture.
    let panel: std::collections::HashSet<[u8; 3]> =
        (0..height).flat_map(|y| (700..width).map(move |x| (x, y))).map(|(x, y)| shot.get_pixel(x, y).0).collect();
    assert!(panel.len() > 20, "the panel shows {} colours", panel.len());
    eprintln!("navigation to first reconstruction: {} ms", result["ms_since_navigation"]);
}

/// Training in the page: the loss falls, and the downloaded checkpoint
/// loads natively and reconstructs as it did in the page.
#[test]
fn training_in_the_page_learns_and_downloads_a_checkpoint_cmae_loads() {
    if !can_run() {
        return;
    }
    let (steps, seed, image) = (40, 2, "assets/fmnist-test-1.png");
    let page = format!("index.html?train=micro&steps={steps}&seed={seed}&image={image}&download=1");
    let run = run_page(&page, true, &["trained", "result"], Duration::from_secs(480));
    assert!(!run.lines.contains_key("error"), "{:?}", run.lines);
    let trained = run.json("trained");
    assert_eq!(trained["steps"], steps);
    let losses = numbers(&trained["losses"]);
    assert_eq!(losses.len(), steps);
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[steps - 8..]));
    assert!(last < 0.8 * first, "the page's loss fell from {first:.4} only to {last:.4}");
    let file = run.downloads.join(format!("cmae-pretrain-step-{steps:08}.safetensors"));
    for _ in 0..100 {
        if file.is_file() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(file.is_file(), "no download in {}", run.downloads.display());
    let native = native_reconstruction(&file, &site().join(image), None, seed);
    assert_same_reconstruction(&run.json("result"), &native);
    eprintln!("micro training in the page: {} steps/s", trained["steps_per_s"]);
    let _ = std::fs::remove_dir_all(&run.downloads);
}

#[test]
fn a_browser_without_webgpu_gets_one_sentence_saying_what_to_do() {
    if !can_run() {
        return;
    }
    let run = run_page("index.html", false, &["error"], Duration::from_secs(120));
    assert_eq!(
        run.lines["error"],
        "this browser gives no WebGPU adapter: open the page in a current Chrome, Edge or Safari (or Firefox with WebGPU enabled) on a machine with a GPU driver"
    );
}
