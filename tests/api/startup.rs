//! Start-up: secrets, configuration layering, the CLI basics.

use std::process::Command;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, bin, clean_env, secret};

fn serve_with_secret(secret: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    cmd.arg("serve")
        .env("COFFER_STORAGE__ROOT", dir.path().join("s"))
        .env("COFFER_SERVER__BIND", "127.0.0.1:0");
    if let Some(s) = secret {
        cmd.env("COFFER_SECRET_KEY", s);
    }
    // A server that wrongly starts would run forever: bound it.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server started with secret {secret:?}");
}

#[test]
fn refuses_to_start_without_a_secret() {
    let out = serve_with_secret(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("COFFER_SECRET_KEY") && err.contains("gen-secret"),
        "{err}"
    );
}

#[test]
fn refuses_weak_and_placeholder_secrets() {
    for bad in [
        "changeme",
        "secret",
        "my-secret-key",
        "your-secret-key-here",
        "short",
        &"0".repeat(64),
        &"ab".repeat(32),
    ] {
        let out = serve_with_secret(Some(bad));
        assert_eq!(out.status.code(), Some(2), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("COFFER_SECRET_KEY"), "{bad}: {err}");
        assert!(
            bad.len() < 12 || !err.contains(bad),
            "the message echoes the secret: {err}"
        );
    }
}

#[test]
fn gen_secret_prints_64_hex_characters() {
    let out = Command::new(bin()).arg("gen-secret").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.len(), 65);
    assert!(s.ends_with('\n'));
    assert!(s.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(s, secret() + "\n", "two secrets are different");
}

#[tokio::test]
async fn env_overrides_win_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coffer.toml");
    std::fs::write(&file, "[limits]\nmax_upload_bytes = 10\n").unwrap();
    // The file alone: 10 bytes.
    let app = TestApp::builder()
        .env("COFFER_CONFIG", file.to_str().unwrap())
        .spawn()
        .await;
    let u = app.user("fileonly").await;
    let r = app.upload(&u.token, "a.png", png(100)).await;
    assert_eq!(r.status(), 413);
    drop(app);
    // The environment wins over the file.
    let app = TestApp::builder()
        .env("COFFER_CONFIG", file.to_str().unwrap())
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "1000")
        .spawn()
        .await;
    let u = app.user("envwins").await;
    let r = app.upload(&u.token, "a.png", png(100)).await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn config_flag_wins_over_coffer_config() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.toml");
    let large = dir.path().join("large.toml");
    std::fs::write(&small, "[limits]\nmax_upload_bytes = 10\n").unwrap();
    std::fs::write(&large, "[limits]\nmax_upload_bytes = 1000\n").unwrap();
    let app = TestApp::builder()
        .env("COFFER_CONFIG", small.to_str().unwrap())
        .arg("--config")
        .arg(large.to_str().unwrap())
        .spawn()
        .await;
    let u = app.user("flagwins").await;
    assert_eq!(app.upload(&u.token, "a.png", png(100)).await.status(), 201);
}

#[test]
fn unknown_keys_and_bad_values_stop_start_up() {
    for (k, v) in [
        ("COFFER_LIMITS__MAX_UPLOADZ", "1"),
        ("COFFER_LIMITS__MAX_UPLOAD_BYTES", "lots"),
        ("COFFER_CORS__ALLOWED_ORIGINS", "*"),
        ("COFFER_CORS__MAX_AGE_SECS", "100000"),
        (
            "COFFER_SERVING__FRAME_ANCESTORS",
            "https://a.example;script-src",
        ),
        ("COFFER_SERVING__FRAME_ANCESTORS", "*"),
        ("COFFER_LINKS__MAX_VIEW_SECS", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        let out = cmd
            .args(["check"])
            .env("COFFER_STORAGE__ROOT", dir.path())
            .env("COFFER_SECRET_KEY", secret())
            .env(k, v)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{k}={v}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains(
                &k.trim_start_matches("COFFER_")
                    .split("__")
                    .nth(1)
                    .unwrap()
                    .to_lowercase()
            ) || err.contains("cors"),
            "{err}"
        );
    }
}

#[test]
fn database_url_secrets_come_from_the_environment_once() {
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, "postgres://coffer:hunter2@127.0.0.1:9/coffer\n").unwrap();
    let config = dir.path().join("coffer.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://coffer:hunter2@127.0.0.1:9/coffer\"\n",
    )
    .unwrap();
    let url_file = url_file.to_str().unwrap();
    let config = config.to_str().unwrap();
    /// Environment, arguments before `serve`, and what the error must say.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 3] = [
        (
            &[
                (
                    "COFFER_DATABASE_URL",
                    "postgres://coffer@127.0.0.1:9/coffer",
                ),
                ("COFFER_DATABASE_URL_FILE", url_file),
            ],
            &[],
            "both COFFER_DATABASE_URL and COFFER_DATABASE_URL_FILE",
        ),
        (&[], &["--config", config], "carries a password"),
        (
            &[("COFFER_DATABASE_URL", "mysql://127.0.0.1/coffer")],
            &[],
            "postgres://",
        ),
    ];
    for (env, args, says) in cases {
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        cmd.args(args)
            .arg("serve")
            .env("COFFER_STORAGE__ROOT", dir.path().join("s"))
            .env("COFFER_SECRET_KEY", secret());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[tokio::test]
async fn storage_root_is_created_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn().await;
    let mode = std::fs::metadata(&app.root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[tokio::test]
async fn dev_mode_runs_without_a_secret_on_loopback() {
    let app = TestApp::builder()
        .single_node("dev mode makes its own user and secret in one process")
        .without("COFFER_SECRET_KEY")
        .arg("--dev")
        .env("COFFER_SERVER__BIND", "0.0.0.0:0")
        .spawn()
        .await;
    assert!(app.addr.ip().is_loopback());
    app.eventually("the dev-mode warning", || app.logs().contains("DEV MODE"))
        .await;
    // Its ephemeral secret never signs anything in the configured (real) store.
    app.user("devuser").await;
    let dev_root = app.root.with_file_name("storage-dev");
    assert!(dev_root.join("coffer.db").is_file(), "{}", app.logs());
    assert!(!app.root.exists(), "dev mode wrote into the real store");
}

/// Every configuration problem at once, each with the file line or the variable that set it.
#[test]
fn every_config_problem_is_listed_with_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coffer.toml");
    std::fs::write(
        &file,
        "# six mistakes\n\
         [server]\n\
         bind = \"not an address\"\n\
         max_connections = \"many\"\n\
         colour = \"blue\"\n\
         \n\
         [limits]\n\
         max_upload_bytes = 0\n\
         \n\
         [cors]\n\
         allowed_origins = [\"*\"]\n\
         [nonsense]\n\
         a = 1\n",
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    let out = cmd
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("COFFER_STORAGE__ROOT", dir.path().join("s"))
        .env("COFFER_SECRET_KEY", secret())
        .env("COFFER_AUTH__ACCESS_TTL_SECS", "soon")
        .env("COFFER_RATE_LIMIT__BURSTY", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = file.display().to_string();
    for (key, origin) in [
        ("server.bind", format!("{f}:3")),
        ("server.max_connections", format!("{f}:4")),
        ("server.colour", format!("{f}:5")),
        ("limits.max_upload_bytes", format!("{f}:8")),
        ("cors.allowed_origins", format!("{f}:11")),
        ("nonsense", format!("{f}:12")),
        (
            "auth.access_ttl_secs",
            "COFFER_AUTH__ACCESS_TTL_SECS".to_owned(),
        ),
        ("rate_limit.bursty", "COFFER_RATE_LIMIT__BURSTY".to_owned()),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(key) && l.contains(&format!("set in {origin})"))),
            "{key} from {origin} not reported:\n{err}"
        );
    }
    assert!(!out.status.success() && !dir.path().join("s").exists());
}

/// One summary line at start; a warning when anyone on the network may register.
#[tokio::test]
async fn start_up_prints_one_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[auth]\nopen_registration = true\n").unwrap();
    let app = TestApp::builder()
        .single_node("reads one process's start-up line")
        .arg("--config")
        .arg(file.to_str().unwrap())
        .env("COFFER_SERVER__BIND", "0.0.0.0:0")
        .spawn()
        .await;
    app.eventually("the summary", || app.logs().contains("starting: config"))
        .await;
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("starting: config"))
        .unwrap();
    let root = std::path::absolute(&app.root).unwrap();
    for want in [
        format!("coffer {}", env!("CARGO_PKG_VERSION")),
        format!("defaults + {}", file.display()),
        "COFFER_SERVER__BIND".to_owned(),
        format!("storage {}", root.display()),
        format!("bind 0.0.0.0:{}", app.addr.port()),
        "TLS off".to_owned(),
        "encryption at rest off".to_owned(),
        "registration open".to_owned(),
    ] {
        assert!(line.contains(&want), "{want:?} not in {line}");
    }
    assert_eq!(logs.matches("starting: config").count(), 1);
    assert!(logs.contains("registration is open"), "{logs}");
}

#[test]
fn an_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    let out = cmd
        .arg("serve")
        .env("COFFER_STORAGE__ROOT", dir.path().join("s"))
        .env("COFFER_SECRET_KEY", secret())
        .env("COFFER_SERVER__BIND", &addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
}
