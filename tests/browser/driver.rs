//! Finding Chromium and chromedriver, running chromedriver on a free port, and a WebDriver
//! session of headless Chromium on it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{wd::WebDriverCompatibleCommand, Client, ClientBuilder};
use serde_json::{json, Value};

/// Where Debian's `chromium-driver` and `chromium` put them, then `PATH`.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(PathBuf::from("/usr/bin")).chain(std::env::split_paths(&path));
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running chromedriver; dropping it shuts it down (and the browsers it started), even when
/// the test panics, and removes the temporary folder they worked in.
pub struct Chromedriver {
    child: Child,
    port: u16,
    /// chromedriver's and Chromium's `TMPDIR`: their profiles and sockets, which a browser
    /// that is stopped rather than closed would leave behind in `/tmp`.
    tmp: PathBuf,
}

impl Chromedriver {
    /// Starts `program` on a free loopback port and waits (≤ 10 s) until it is ready.
    pub fn start(program: &Path) -> Chromedriver {
        let mut last_error = String::new();
        let tmp = std::env::temp_dir().join(format!("relaybot-browser-{}", std::process::id()));
        // A port found free may be taken before chromedriver binds it: then try another.
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            std::fs::create_dir_all(&tmp).expect("a temporary folder for the browser");
            let child = Command::new(program)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .env("TMPDIR", &tmp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            let mut driver = Chromedriver {
                child,
                port,
                tmp: tmp.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = driver.child.try_wait() {
                    last_error = format!("chromedriver exited: {status}");
                    break;
                }
                match driver.get("/status") {
                    Ok(body) if body.contains("\"ready\":true") => return driver,
                    Ok(body) => last_error = format!("not ready: {body}"),
                    Err(e) => last_error = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("chromedriver did not start: {last_error}");
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain blocking `GET` (also usable from `Drop`): the response's body. chromedriver
    /// keeps the connection open whatever we ask, so the body is read to its `Content-Length`.
    fn get(&self, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = stream.read(&mut buf)?;
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok());
                if n == 0 || length.is_some_and(|length| body.len() >= length) {
                    return Ok(body.to_owned());
                }
            }
            if n == 0 {
                return Ok(text.into_owned());
            }
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // `/shutdown` quits every session's browser, then chromedriver itself.
        let _ = self.get("/shutdown");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A WebDriver session of headless Chromium (`binary`), `width`×`height`, that keeps the
/// page's console messages (see [`BrowserLog`]).
pub async fn headless_chromium(
    driver: &Chromedriver,
    binary: &Path,
    (width, height): (u32, u32),
) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary.to_str().expect("a UTF-8 path"),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                "--force-device-scale-factor=1",
                "--hide-scrollbars",
                // Screenshots the same every run: no animation half done, and no text re-rastered
                // in part (which changed a few pixels of the header now and then).
                "--force-prefers-reduced-motion",
                "--disable-partial-raster",
                "--lang=en-US",
                "--no-first-run",
                "--disable-extensions",
            ],
        }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::rustls()
        .expect("a WebDriver client")
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("a headless Chromium session: {e}"))
}

/// chromedriver's `POST /session/{id}/se/log` for the `browser` log: the page's console
/// messages and failed loads since the last call.
#[derive(Debug)]
pub struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.into()),
        )
    }
}

/// The page's console entries since the last call, as `LEVEL message`.
pub async fn browser_log(client: &Client) -> Vec<String> {
    let entries = client.issue_cmd(BrowserLog).await.expect("the browser log");
    entries
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e: &Value| {
                    format!(
                        "{} {}",
                        e["level"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
