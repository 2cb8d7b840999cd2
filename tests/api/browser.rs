//! A real browser against a real server: Debian's chromium, driven by playwright-core
//! (`tests/browser/view_urls.mjs`), with the page on a second loopback origin. It uploads
//! through CORS, shows an `<img>` and a `<video>` (seeked to the middle: a 206 from there)
//! from view URLs with no preflight, frames a PDF from an allowed ancestor and is refused from
//! another, shows a text file inline without running its script, counts preflights (cached),
//! uploads with the README's Uppy recipe (coffer's problem detail shown, a refusal sent once,
//! a network failure retried) and its tus variant (Uppy's Tus plugin, 1 MiB chunks, the exact
//! sha256), and sees revocation turn the next request into a 401.
//!
//! Skips, saying why, when chromium, node or `tests/browser/node_modules` is missing (run
//! `npm ci` in `tests/browser`); fails instead under `COFFER_TEST_REQUIRE_STACK=1`, as CI
//! runs it (`.ci/run` installs chromium and runs `npm ci`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::TestApp;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Why the browser test cannot run here, if it cannot.
fn missing(dir: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is not installed (apt-get install chromium)"
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "no {}/node_modules: run npm ci there",
            dir.display()
        ));
    }
    None
}

/// A loopback port nothing listens on (the script binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_page_on_another_origin_uses_view_urls_frames_pdfs_and_caches_preflights_in_chromium() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing(&dir) {
        assert!(
            std::env::var("COFFER_TEST_REQUIRE_STACK").as_deref() != Ok("1"),
            "the browser test cannot run: {why}"
        );
        eprintln!("skipped: the browser test: {why}");
        return;
    }
    let (page_port, other_port) = (free_port(), free_port());
    let page = format!("http://127.0.0.1:{page_port}");
    let app = TestApp::builder()
        .single_node("counts one process's preflights and view-URL answers in its /metrics")
        .env("COFFER_CORS__ALLOWED_ORIGINS", page.clone())
        .env("COFFER_SERVING__FRAME_ANCESTORS", page)
        .env(
            "COFFER_UPLOADS__ALLOWED",
            r#"{ png = "image/png", pdf = "application/pdf", txt = "text/plain", webm = "video/webm" }"#,
        )
        .spawn()
        .await;
    let u = app.user("browser").await;
    // The app's backend: it mints upload grants for the page with its API key.
    let key = app.new_api_key(&u.token, "backend").await;

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("view_urls.mjs")
        .current_dir(&dir)
        .env("COFFER_API", app.url(""))
        .env("COFFER_TOKEN", &u.token)
        .env("COFFER_API_KEY", key["key"].as_str().unwrap_or_default())
        .env("PAGE_PORT", page_port.to_string())
        .env("OTHER_PORT", other_port.to_string())
        .env("CHROMIUM", CHROMIUM)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("the browser test took over 240 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    // Each check printed its line; none may be missing (a script that stopped early fails).
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, 27, "{stdout}");
    // Everything the page did, and no view token, reached the log.
    let logs = app.logs();
    assert!(!logs.contains("?view="), "a view URL in the log");
}
