//! A headless Chromium driven over WebDriver, for tests of the web pages as a
//! person sees them. It uses Debian's `chromium` and `chromium-driver`
//! (`scripts/test` installs them) and speaks the few WebDriver commands the
//! tests need over plain HTTP, so no driver library is needed.
//!
//! Each [`Browser`] has its own chromedriver, a fresh profile and download
//! folder; dropping it ends both processes. Waits poll with a deadline.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use base64::Engine;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::{Semaphore, SemaphorePermit},
};

/// How long a browser wait lasts: pages poll and render on a busy 2-core
/// machine, so more than the API waits.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// Browsers at once: each is a handful of processes and a few hundred MiB,
/// and the other tests need the cores too.
static SLOTS: Semaphore = Semaphore::const_new(2);

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The build's target folder: the test binary runs from `<target>/debug/deps`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir)
}

/// Where screenshots go: `<target>/ui-screenshots/<test>/`, kept after the
/// run so a person can look at them.
pub fn screenshot_dir() -> PathBuf {
    target_dir().join("ui-screenshots")
}

/// Starts chromedriver on a free port (its log in `work`), and returns it
/// with its port and the rest of its output, or why it did not start.
async fn start_driver(
    work: &Path,
    try_number: u32,
) -> Result<(Child, u16, Lines<BufReader<ChildStdout>>), String> {
    let log = work.join(format!("chromedriver-{try_number}.log"));
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut driver = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        // Its own process group, so that Drop can end Chromium with it.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): install Debian's chromium and chromium-driver \
                 (scripts/test does)"
            )
        });
    let stdout = driver.stdout.take().ok_or("chromedriver has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut said = Vec::new();
    let port = tokio::time::timeout(BROWSER_DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                return rest.trim_end_matches('.').trim().parse::<u16>().ok();
            }
            said.push(line);
        }
        None
    })
    .await;
    match port {
        Ok(Some(port)) => Ok((driver, port, lines)),
        failed => {
            let _ = driver.kill().await;
            let status = driver
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            let errors = std::fs::read_to_string(&log).unwrap_or_default();
            let how = if failed.is_err() {
                "did not say its port in time"
            } else {
                "ended"
            };
            Err(format!(
                "it {how} ({status}); it said {said:?}; its errors: {errors:?}"
            ))
        }
    }
}

pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    work: PathBuf,
    /// Screenshots of this browser's test.
    pub shots: PathBuf,
    /// Files the pages downloaded.
    pub downloads: PathBuf,
    _slot: SemaphorePermit<'static>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `test` names the folder
    /// of its screenshots.
    pub async fn start(test: &str) -> Self {
        let slot = SLOTS.acquire().await.unwrap();
        let work = target_dir()
            .join("tmp")
            .join("browsers")
            .join(format!("{test}-{}", uuid::Uuid::new_v4().simple()));
        let profile = work.join("profile");
        let downloads = work.join("downloads");
        let shots = screenshot_dir().join(test);
        for dir in [&profile, &downloads, &shots] {
            std::fs::create_dir_all(dir).unwrap();
        }

        // A chromedriver that ends before it says its port is started
        // again (twice at most): the test is about the pages, and its
        // output, kept in the work folder, goes into the failure if every
        // try ends that way.
        let mut tries = 0;
        let (driver, port, mut lines) = loop {
            tries += 1;
            match start_driver(&work, tries).await {
                Ok(started) => break started,
                Err(why) if tries < 3 => eprintln!("chromedriver, try {tries}: {why}"),
                Err(why) => panic!("chromedriver did not start in {tries} tries: {why}"),
            }
        };
        // Keep reading its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-quic",
                        "--no-first-run",
                        // Without these Chromium reaches for the network at
                        // start and stalls on a machine that has none.
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-dev-shm-usage",
                        "--lang=en-GB",
                        "--window-size=1280,1000",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                    "prefs": {
                        "download.default_directory": downloads.display().to_string(),
                        "download.prompt_for_download": false,
                        "intl.accept_languages": "en-GB",
                    },
                },
            }},
        });
        let response: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {response}"))
            .to_owned();
        Self {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            work,
            shots,
            downloads,
            _slot: slot,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        response["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    /// Opens `url` and waits for the page to have loaded.
    pub async fn goto(&self, url: &str) {
        let value = self.post("/url", json!({ "url": url })).await;
        assert!(
            value.is_null() || value.get("error").is_none(),
            "opening {url}: {value}"
        );
    }

    /// Reloads the page, as a person pressing F5, and waits for it to load.
    pub async fn reload(&self) {
        let value = self.post("/refresh", json!({})).await;
        assert!(
            value.is_null() || value.get("error").is_none(),
            "reloading: {value}"
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.try_eval(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}"))
    }

    /// Runs `script` in the page, or says why WebDriver could not.
    async fn try_eval(&self, script: &str, args: Value) -> Result<Value, String> {
        let value = self
            .post("/execute/sync", json!({ "script": script, "args": args }))
            .await;
        match value.get("error") {
            Some(error) => Err(format!("{error}: {}", value["message"])),
            None => Ok(value),
        }
    }

    /// Waits until `script` returns something truthy, and returns it.
    /// A script that fails is tried again until the deadline: while a page
    /// is being replaced by the next one, Chromium may have no document to
    /// run it in.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let end = tokio::time::Instant::now() + BROWSER_DEADLINE;
        let mut pause = Duration::from_millis(50);
        loop {
            let (value, failure) = match self.try_eval(script, args.clone()).await {
                Ok(value) => (value, None),
                Err(error) => (Value::Null, Some(error)),
            };
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() >= end {
                if let Some(error) = failure {
                    panic!("waited in vain for {what}; the script failed: {error}");
                }
                let text = self.eval("return document.body.innerText", json!([])).await;
                panic!("waited in vain for {what}; the page says:\n{text}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits for an element matching `css` and returns its visible text.
    pub async fn wait_element(&self, css: &str) -> String {
        self.wait_for(
            &format!("an element `{css}`"),
            "const el = document.querySelector(arguments[0]); return el ? (el.innerText || ' ') : null;",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the element matching `css` shows text containing `needle`,
    /// and returns its whole text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        self.wait_for(
            &format!("`{needle}` in `{css}`"),
            "const el = document.querySelector(arguments[0]);
             return el && el.innerText.includes(arguments[1]) ? el.innerText : null;",
            json!([css, needle]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The text of the element matching `css`, now (empty when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.eval(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Finds the element matching `css` (waiting for it) and does `act` to
    /// it, which answers WebDriver's value. A page that re-renders the
    /// element between the finding and the act leaves a stale reference or
    /// none: that is tried again, with the element found anew.
    async fn on_element(&self, css: &str, what: &str, act: impl AsyncFn(&str) -> Value) {
        let end = tokio::time::Instant::now() + BROWSER_DEADLINE;
        loop {
            self.wait_element(css).await;
            let found = self
                .post("/element", json!({ "using": "css selector", "value": css }))
                .await;
            let value = match found[ELEMENT].as_str() {
                Some(id) => act(id).await,
                None => found,
            };
            if value.is_null() {
                return;
            }
            let error = value["error"].as_str().unwrap_or_default();
            let gone = error == "stale element reference" || error == "no such element";
            if !gone || tokio::time::Instant::now() >= end {
                panic!("{what} `{css}`: {value}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element matching `css` as a person would.
    pub async fn click(&self, css: &str) {
        self.on_element(css, "clicking", async |id| {
            self.post(&format!("/element/{id}/click"), json!({})).await
        })
        .await;
    }

    /// Replaces the text of the input matching `css` by typing `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.on_element(css, "typing into", async |id| {
            let cleared = self.post(&format!("/element/{id}/clear"), json!({})).await;
            if !cleared.is_null() {
                return cleared;
            }
            self.post(&format!("/element/{id}/value"), json!({ "text": text }))
                .await
        })
        .await;
    }

    /// Chooses the option with `value` in the select matching `css`.
    pub async fn choose(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// Saves a screenshot as `<name>.png` and checks that it shows something:
    /// a decodable PNG that is not one flat colour.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let value = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        assert_not_blank(&path);
        path
    }

    /// Waits until the download folder holds a finished file, and returns it.
    pub async fn downloaded(&self, name: &str) -> PathBuf {
        let path = self.downloads.join(name);
        let end = tokio::time::Instant::now() + BROWSER_DEADLINE;
        loop {
            let partial = std::fs::read_dir(&self.downloads)
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"));
            if path.exists() && !partial {
                return path;
            }
            let present: Vec<String> = std::fs::read_dir(&self.downloads)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                tokio::time::Instant::now() < end,
                "{name} was never downloaded; the folder has {present:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.command(reqwest::Method::DELETE, "", None),
        )
        .await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test does not reach close(): end the whole process group
        // (chromedriver and the Chromium it started) so nothing lingers.
        // The `--` matters: without it procps-ng's kill reads `-<pid>` as
        // an option and signals -1, every process the user may signal.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Panics unless `path` is a PNG with real content: not one flat colour,
/// and not almost all one colour either.
pub fn assert_not_blank(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    assert!(
        info.width >= 200 && info.height >= 200,
        "{}: only {}x{}",
        path.display(),
        info.width,
        info.height
    );
    let mut counts: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for pixel in pixels.chunks_exact(channels) {
        *counts.entry(pixel).or_default() += 1;
    }
    let total = pixels.len() / channels;
    let commonest = counts.values().copied().max().unwrap_or(0);
    assert!(
        counts.len() >= 16,
        "{} is blank: {} colour(s)",
        path.display(),
        counts.len()
    );
    assert!(
        commonest * 100 < total * 98,
        "{} is almost blank: one colour covers {commonest} of {total} pixels",
        path.display()
    );
}
