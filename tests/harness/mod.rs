//! Test harness: real servers and real probes, each started on a free 127.0.0.1 port and stopped
//! when its guard drops.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tests that push media through x264 take this lock, so that timing figures (reconnect time,
/// deadlines) are not skewed by another encoder competing for the same two cores.
pub static MEDIA: Mutex<()> = Mutex::new(());

pub fn media_lock() -> std::sync::MutexGuard<'static, ()> {
    MEDIA.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn zhubo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zhubo"));
    c.env("RUST_LOG", "info");
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "zhubo-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain syscall on a pid we own.
    unsafe { libc::kill(child.id() as i32, sig) };
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls `f` every 100 ms until it is true or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A real nginx with the RTMP module, in the foreground, on free loopback ports.
pub struct Ingest {
    dir: Scratch,
    pub rtmp_port: u16,
    pub http_port: u16,
    child: Option<Child>,
}

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

impl Ingest {
    pub fn start() -> Ingest {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "nginx's RTMP module is missing: run scripts/setup (Debian package libnginx-mod-rtmp)"
        );
        let dir = Scratch::new("nginx");
        let (rtmp_port, http_port) = (free_port(), free_port());
        let template = std::fs::read_to_string(repo().join("scripts/local-ingest.conf")).unwrap();
        let conf = template
            .replace("@DIR@", &dir.0.display().to_string())
            .replace("@RTMP_PORT@", &rtmp_port.to_string())
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@RTMP_MODULE@", RTMP_MODULE);
        dir.write("nginx.conf", &conf);
        let mut ingest = Ingest { dir, rtmp_port, http_port, child: None };
        ingest.restart();
        ingest
    }

    /// (Re)starts nginx on the same ports and waits until it listens.
    pub fn restart(&mut self) {
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir.0)
            .arg("-c")
            .arg(self.dir.path("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (scripts/setup installs it)");
        self.child = Some(child);
        let port = self.rtmp_port;
        wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok())
            .expect("nginx listens within 10 s");
    }

    /// Kills nginx abruptly, as a crashed or unreachable ingest.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.rtmp_port)
    }

    /// The RTMP module's statistics page.
    pub fn stat(&self) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http_port)) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /stat HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// True while a publisher streams `key` into the ingest.
    pub fn publishing(&self, key: &str) -> bool {
        let stat = self.stat();
        stat.find(&format!("<name>{key}</name>")).is_some_and(|i| stat[i..].contains("<publishing/>"))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// ffprobe's JSON for a file or URL.
pub fn ffprobe(target: &str, extra: &[&str]) -> Value {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-of", "json"]).args(extra).arg(target);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20)).expect("ffprobe finishes within 20 s");
    assert!(out.0.success(), "ffprobe {target} failed: {}", out.2);
    serde_json::from_str(&out.1).expect("ffprobe prints JSON")
}

pub fn streams(target: &str) -> Vec<Value> {
    ffprobe(target, &["-show_streams", "-show_format"])["streams"].as_array().cloned().unwrap_or_default()
}

pub fn stream<'a>(streams: &'a [Value], codec_type: &str) -> &'a Value {
    streams
        .iter()
        .find(|s| s["codec_type"] == codec_type)
        .unwrap_or_else(|| panic!("no {codec_type} stream in {streams:?}"))
}

pub fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Packet timestamps (seconds) of one stream of a file, in decode order.
pub fn packet_times(file: &str, stream: &str) -> Vec<f64> {
    let v = ffprobe(file, &["-select_streams", stream, "-show_entries", "packet=pts_time"]);
    v["packets"].as_array().unwrap().iter().map(|p| num(&p["pts_time"])).collect()
}

/// Runs a command with a time limit; returns (status, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Option<(ExitStatus, String, String)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = match wait_with_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    };
    Some((status, out_reader.join().unwrap(), err_reader.join().unwrap()))
}

/// Decodes the video of `file` to 8-bit luma of the rectangle (x, y, w, h), one Vec per frame.
/// The rectangle is widened to even coordinates, as 4:2:0 video crops only on even pixels.
pub fn luma_frames(file: &str, rect: (u32, u32, u32, u32)) -> Vec<Vec<u8>> {
    let (x, y) = (rect.0 & !1, rect.1 & !1);
    let (w, h) = ((rect.0 + rect.2 - x + 1) & !1, (rect.1 + rect.3 - y + 1) & !1);
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            file,
            "-fps_mode",
            "passthrough",
            "-vf",
            &format!("crop={w}:{h}:{x}:{y}"),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact((w * h) as usize).map(|c| c.to_vec()).collect()
}

/// Largest gap between consecutive timestamps.
pub fn max_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}
