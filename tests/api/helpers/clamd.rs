//! clamd daemons of a test's own, for tests that kill one or freeze one so it never answers. The
//! stack's clamd is shared with other test runs (and other people's), so it is never stopped:
//! a test that needs clamd to die starts its own (Debian's `clamd`, the project's EICAR-only
//! signature database, a unix socket in a temporary directory) and kills that one.
//!
//! ```ignore
//! let Some(mut clamd) = OwnClamd::start("my_test") else { return };
//! let app = TestApp::builder().env("COFFER_SCAN__CLAMD", clamd.addr()).spawn().await;
//! clamd.freeze(); // SIGSTOP: the socket still takes connections, nothing is read or answered
//! clamd.kill();
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::stack;

/// The clamd binary, if installed.
fn clamd_binary() -> Option<PathBuf> {
    ["/usr/sbin/clamd", "/usr/bin/clamd", "/usr/local/sbin/clamd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A clamd this test started and may kill.
pub struct OwnClamd {
    child: Option<Child>,
    dir: TempDir,
}

impl OwnClamd {
    /// Start one and wait until it answers `PING`. `None` (after a note) when clamd is not
    /// installed; with `COFFER_TEST_REQUIRE_STACK=1` that fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = clamd_binary() else {
            assert!(
                std::env::var(stack::REQUIRE_STACK).as_deref() != Ok("1"),
                "{test} needs clamd (Debian clamav-daemon)"
            );
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test} needs clamd (Debian clamav-daemon)"
            );
            return None;
        };
        let dir = tempfile::Builder::new().prefix("clamd-").tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clamav");
        std::fs::copy(fixtures.join("coffer-test.ndb"), db.join("coffer-test.ndb")).unwrap();
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nLocalSocket {sock}\nLocalSocketMode 600\n\
                 DatabaseDirectory {db}\nTemporaryDirectory {tmp}\nLogFile {log}\n\
                 SelfCheck 0\nMaxThreads 2\nStreamMaxLength 25M\nMaxFileSize 25M\n\
                 ReadTimeout 30\nCommandReadTimeout 30\nIdleTimeout 30\n",
                sock = dir.path().join("clamd.sock").display(),
                db = db.display(),
                tmp = dir.path().join("tmp").display(),
                log = dir.path().join("clamd.log").display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        let clamd = Self {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while clamd.ping().is_err() {
            assert!(
                Instant::now() < deadline,
                "clamd did not answer PING within 60 s; its log:\n{}",
                std::fs::read_to_string(clamd.dir.path().join("clamd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(clamd)
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    /// `scan.clamd` for it: `unix:/path`.
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    fn ping(&self) -> std::io::Result<()> {
        let mut s = UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"zPING\0")?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        if answer.starts_with(b"PONG") {
            Ok(())
        } else {
            Err(std::io::Error::other("no PONG"))
        }
    }

    /// Freeze it (SIGSTOP): a clamd that hangs. The kernel still queues connections on its
    /// socket and takes writes until the buffers fill, but nothing is read or answered.
    /// Killing it later (or dropping it) still works.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status()
                .expect("run kill -STOP");
            assert!(status.success(), "kill -STOP clamd: {status}");
        }
    }

    /// Kill it (SIGKILL: no goodbye to open sessions) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnClamd {
    fn drop(&mut self) {
        self.kill();
    }
}
