//! A real browser for tests: Debian's `chromium`, headless, driven by its
//! `chromedriver` over the W3C WebDriver HTTP API (no client library: a
//! few JSON calls). The test reads what the page shows (`innerText`, the
//! attributes the page sets) and acts as a user does: clicks, typing, keys.
//! chromedriver runs in its own process group, which is killed with the
//! browser in it when the handle drops, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{free_port, wait_until};

/// The key WebDriver calls W3C's "element" reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's code for a key, for [`Browser::press`] and typing.
pub mod keys {
    pub const ENTER: &str = "\u{E007}";
    pub const TAB: &str = "\u{E004}";
}

/// A program on PATH, or `None`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// chromium and chromedriver: `ZF_CHROMIUM` and `ZF_CHROMEDRIVER`, else on
/// PATH. Panics saying how to install them: a console test that cannot run
/// must not pass.
pub fn programs() -> (PathBuf, PathBuf) {
    let find = |variable: &str, name: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .or_else(|| on_path(name))
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not installed, so the web console cannot be tested: run scripts/install-deps.sh (Debian: apt-get install --no-install-recommends chromium chromium-driver) or set {variable}"
                )
            })
    };
    (
        find("ZF_CHROMIUM", "chromium"),
        find("ZF_CHROMEDRIVER", "chromedriver"),
    )
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver and a headless chromium of `width` × `height`
    /// with its profile and logs in `dir`.
    pub async fn start(dir: &Path, width: u32, height: u32) -> Self {
        use std::os::unix::process::CommandExt;
        let (chromium, chromedriver) = programs();
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("chromedriver log");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own group, so that dropping the handle ends chromium too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
        };
        let status = format!("{}/status", browser.base);
        wait_until(
            "chromedriver to answer /status",
            Duration::from_secs(20),
            || {
                let (http, status) = (browser.http.clone(), status.clone());
                async move {
                    let answer: Value = http
                        .get(&status)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    if answer["value"]["ready"] == true {
                        Ok(())
                    } else {
                        Err(answer.to_string())
                    }
                }
            },
        )
        .await;
        let profile = dir.join("chromium-profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let answer = browser.call("POST", "/session", Some(capabilities)).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {answer}"))
            .to_string();
        browser.resize(width, height).await;
        browser
    }

    /// One WebDriver call; panics with WebDriver's error when it fails.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(e) => panic!("WebDriver {method} {path} failed: {e}"),
        }
    }

    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(answer["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                answer["value"]["error"], answer["value"]["message"]
            ))
        }
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Sets the window's outer size, e.g. a laptop's 1366 × 768 or a phone's 390 × 844.
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The first element matching a CSS selector, as WebDriver knows it.
    pub async fn find(&self, css: &str) -> Result<String, String> {
        let found = self
            .try_call(
                "POST",
                &self.session_path("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element {css}: {found}"))
    }

    /// Waits for `css` to be there and clickable, then clicks it as a user
    /// would (WebDriver refuses a hidden or covered element).
    pub async fn click(&self, css: &str) {
        wait_until(
            &format!("{css} to be clickable"),
            Duration::from_secs(20),
            || async move {
                let element = self.find(css).await?;
                self.try_call(
                    "POST",
                    &self.session_path(&format!("/element/{element}/click")),
                    Some(json!({})),
                )
                .await
                .map(|_| ())
            },
        )
        .await;
    }

    /// Types `text` into the field `css` (keys such as [`keys::ENTER`] included).
    pub async fn type_into(&self, css: &str, text: &str) {
        wait_until(
            &format!("{css} to take typing"),
            Duration::from_secs(20),
            || async move {
                let element = self.find(css).await?;
                self.try_call(
                    "POST",
                    &self.session_path(&format!("/element/{element}/value")),
                    Some(json!({"text": text})),
                )
                .await
                .map(|_| ())
            },
        )
        .await;
    }

    /// Empties the field `css`.
    pub async fn clear(&self, css: &str) {
        let element = self
            .find(css)
            .await
            .unwrap_or_else(|e| panic!("cannot clear: {e}"));
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/clear")),
            Some(json!({})),
        )
        .await;
    }

    /// Presses and releases one key, wherever the focus is.
    pub async fn press(&self, key: &str) {
        let actions = json!({"actions": [{
            "type": "key",
            "id": "keyboard",
            "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}],
        }]});
        self.call("POST", &self.session_path("/actions"), Some(actions))
            .await;
    }

    /// The text a user sees in `css` (`innerText`), or an error while it is not there.
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let value = self
            .run(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                json!([css]),
            )
            .await;
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("nothing matches {css}"))
    }

    /// Waits until the text of `css` passes `wanted`, and returns it.
    pub async fn wait_text(&self, what: &str, css: &str, wanted: impl Fn(&str) -> bool) -> String {
        let wanted = &wanted;
        wait_until(what, Duration::from_secs(30), || async move {
            let text = self.text(css).await?;
            if wanted(&text) {
                Ok(text)
            } else {
                Err(format!("{css} shows {text:?}"))
            }
        })
        .await
    }

    /// Waits until `script` (a function body) returns something other than
    /// `null` or `false`, and returns it; `timeout` because some waits
    /// (a failover) take longer than others.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Value,
    ) -> Value {
        let args = &args;
        wait_until(what, timeout, || async move {
            let value = self.run(script, args.clone()).await;
            if value.is_null() || value == json!(false) {
                Err(format!("{value}"))
            } else {
                Ok(value)
            }
        })
        .await
    }

    /// The location's hash, e.g. `#/operations`.
    pub async fn hash(&self) -> String {
        self.run("return window.location.hash;", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the whole page, up to `most` pixels high: the window
    /// grows to the page's height for the picture, then is `width` ×
    /// `height` again.
    pub async fn screenshot_page(&self, path: &Path, (width, height): (u32, u32), most: u32) {
        let sizes = self
            .run(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                json!([]),
            )
            .await;
        let page = sizes[0].as_u64().unwrap_or(u64::from(height)) as u32;
        let chrome = sizes[1].as_u64().unwrap_or(0) as u32;
        self.resize(width, (page + chrome).clamp(height, most))
            .await;
        self.screenshot(path).await;
        self.resize(width, height).await;
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self
            .call("GET", &self.session_path("/screenshot"), None)
            .await;
        let bytes = base64_decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"));
        std::fs::write(path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.driver.id() as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot's encoding), or `None` when it is not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = clean
        .strip_suffix(b"==")
        .or_else(|| clean.strip_suffix(b"="))
        .unwrap_or(&clean);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_every_padding() {
        assert_eq!(super::base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(super::base64_decode("aGV5").as_deref(), Some(&b"hey"[..]));
        assert_eq!(super::base64_decode("aA==").as_deref(), Some(&b"h"[..]));
        assert_eq!(super::base64_decode("a*==").as_deref(), None);
    }
}
