//! Secrets from the environment: `COFFER_SECRET_KEY` decoded as the contract says, and a
//! `_FILE` twin for every secret (both set -> exit 2), tried on the real binary.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::helpers::{TestApp, bin, clean_env, outcome, secret};

/// `coffer serve` on a fresh root with `env`; it must exit by itself (within 20 s).
fn serve_refused(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    cmd.arg("serve")
        .env("COFFER_STORAGE__ROOT", dir.path().join("s"))
        .env("COFFER_SERVER__BIND", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server started with {env:?}");
}

fn assert_exit_2_naming(out: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for w in words {
        assert!(err.contains(w), "{w} not in: {err}");
    }
}

/// A file holding `value` and a newline, as `echo value > file` writes it.
fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn base64_secret_keys_are_decoded_before_their_length_is_judged() {
    let random = |n: usize| {
        let hex = secret();
        hex::decode(&hex).unwrap()[..n].to_vec()
    };
    // 32 base64 characters carry 24 bytes: too short, although the text is 32 bytes long.
    for short in [STANDARD.encode(random(24)), STANDARD.encode(random(30))] {
        let out = serve_refused(&[("COFFER_SECRET_KEY", &short)]);
        assert_exit_2_naming(&out, &["COFFER_SECRET_KEY", "32 bytes"]);
    }
}

#[tokio::test]
async fn base64_secret_keys_of_32_bytes_are_accepted() {
    let hex = secret();
    let b64 = STANDARD.encode(hex::decode(&hex).unwrap());
    let app = TestApp::builder()
        .env("COFFER_SECRET_KEY", b64)
        .spawn()
        .await;
    app.user("base64ed").await;
}

#[tokio::test]
async fn the_secret_key_may_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(&dir, "secret", &secret());
    let app = TestApp::builder()
        .without("COFFER_SECRET_KEY")
        .env("COFFER_SECRET_KEY_FILE", file.clone())
        .env(
            "COFFER_ENCRYPTION_KEY_FILE",
            secret_file(&dir, "enc", &secret()),
        )
        .spawn()
        .await;
    let u = app.user("fromfile").await;
    assert!(app.logs().contains("encryption at rest is on"));
    app.stored(&u.token, "a.png", crate::helpers::fixtures::png(100))
        .await;
    // `check` reads the same file, so the audit chain verifies.
    let (code, out) = outcome(
        app.cli(&["check", "--deep"])
            .env_remove("COFFER_SECRET_KEY")
            .env("COFFER_SECRET_KEY_FILE", &file),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn every_secret_and_its_file_twin_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret();
    let f = secret_file(&dir, "s", &secret());
    let cases: [(&str, Vec<(&str, &str)>); 7] = [
        ("COFFER_SECRET_KEY", vec![]),
        // Unused with the local backend, still refused when set both ways.
        (
            "COFFER_S3_SECRET_ACCESS_KEY",
            vec![("COFFER_SECRET_KEY", &s)],
        ),
        ("COFFER_S3_ACCESS_KEY_ID", vec![("COFFER_SECRET_KEY", &s)]),
        ("COFFER_ENCRYPTION_KEY", vec![("COFFER_SECRET_KEY", &s)]),
        (
            "COFFER_ENCRYPTION_OLD_KEYS",
            vec![("COFFER_SECRET_KEY", &s)],
        ),
        ("COFFER_DATABASE_URL", vec![("COFFER_SECRET_KEY", &s)]),
        (
            "COFFER_S3_SECRET_ACCESS_KEY",
            vec![
                ("COFFER_SECRET_KEY", &s),
                ("COFFER_STORAGE__BACKEND", "s3"),
                ("COFFER_S3__BUCKET", "coffer-test"),
                ("COFFER_S3__ENDPOINT", "http://127.0.0.1:9"),
                ("COFFER_S3_ACCESS_KEY_ID", "GKID"),
            ],
        ),
    ];
    for (var, mut env) in cases {
        let twin = format!("{var}_FILE");
        let value = if var == "COFFER_DATABASE_URL" {
            "postgres://coffer@127.0.0.1:9/coffer".to_owned()
        } else {
            secret()
        };
        env.push((var, &value));
        env.push((&twin, &f));
        let out = serve_refused(&env);
        assert_exit_2_naming(&out, &[var, &twin]);
    }
}

#[test]
fn missing_secret_files_are_named() {
    let out = serve_refused(&[("COFFER_SECRET_KEY_FILE", "/nonexistent/coffer-secret")]);
    assert_exit_2_naming(&out, &["COFFER_SECRET_KEY_FILE"]);
}

#[test]
fn the_password_may_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let pw = secret_file(&dir, "pw", "Correct-Horse-42-battery");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        cmd.args([
            "user",
            "create",
            "--username",
            "filed",
            "--email",
            "f@example.com",
        ])
        .env("COFFER_STORAGE__ROOT", &root)
        .env("COFFER_SECRET_KEY", secret())
        .env("COFFER_AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("COFFER_AUTH__ARGON2_ITERATIONS", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
        outcome(&mut cmd)
    };
    let (code, out) = run(&[
        ("COFFER_PASSWORD", "Correct-Horse-42-battery"),
        ("COFFER_PASSWORD_FILE", &pw),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("COFFER_PASSWORD_FILE"), "{out}");
    let (code, out) = run(&[("COFFER_PASSWORD_FILE", &pw)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"username\":\"filed\""), "{out}");
}
