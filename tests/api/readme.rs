//! The README's quick tour, run as written against a test server: the block is taken from
//! README.md (only the address changes), so the tour cannot rot.
//!
//! Needs `bash`, `curl` (7.76+) and `jq`; without them the test skips with a note, unless
//! `COFFER_TEST_REQUIRE_STACK=1` (CI), where that is a failure.

use std::path::Path;
use std::process::Command;

use crate::helpers::TestApp;
use crate::helpers::stack::REQUIRE_STACK;

/// The first ```sh block under "## Quick tour".
fn tour() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Quick tour\n")
        .nth(1)
        .expect("a Quick tour section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block in the Quick tour");
    block.to_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_quick_tour_runs_as_written() {
    let missing: Vec<&str> = ["bash", "curl", "jq", "base64"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var(REQUIRE_STACK).as_deref() != Ok("1"),
            "the README tour test needs {missing:?}"
        );
        eprintln!("skipped: the README tour needs {missing:?}");
        return;
    }
    let block = tour();
    assert!(
        block.contains("http://127.0.0.1:8080"),
        "the tour talks to the first command's server"
    );
    // The README's promises about the block itself.
    assert!(
        !block.contains("cargo run"),
        "the tour must not start a second server"
    );
    for line in block
        .lines()
        .filter(|l| l.trim_start().starts_with("curl "))
    {
        assert!(line.contains("curl -sS --fail-with-body"), "{line}");
    }
    let app = TestApp::spawn().await;
    let script = block.replace("http://127.0.0.1:8080", &app.base);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-eu", "-o", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // What each step should have shown: the two uploads listed newest first, the range and
    // the share link checked byte for byte.
    let lines: Vec<&str> = stdout.lines().collect();
    let listed = lines
        .iter()
        .position(|l| *l == "notes.txt")
        .expect("the listing");
    assert_eq!(lines.get(listed + 1), Some(&"photo.png"), "{stdout}");
    assert!(stdout.contains("range: ok"), "{stdout}");
    assert!(stdout.contains("share link: ok"), "{stdout}");
}
