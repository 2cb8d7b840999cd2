//! Repository policy: the container image and the repository itself.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn the_container_runs_as_non_root_from_pinned_images() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "unpinned base image: {from}"
        );
    }
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("VOLUME"));
}

#[test]
fn no_secrets_are_committed_and_local_ones_are_ignored() {
    let gitignore = read(".gitignore");
    assert!(gitignore.lines().any(|l| l.trim() == ".env"));
    assert!(gitignore.lines().any(|l| l.trim() == "/storage/*"));
    // The shipped configuration has no field for a secret, and the example env file no value.
    let config = read("config.toml").to_lowercase();
    assert!(
        !config.lines().any(|l| !l.trim_start().starts_with('#')
            && (l.contains("secret") || l.contains("password =")))
    );
    for line in read(".env.example").lines() {
        if let Some(v) = line.strip_prefix("COFFER_SECRET_KEY=") {
            assert!(v.is_empty(), "a value in .env.example");
        }
    }
}

/// Every test SECURITY.md cites as proof exists, under that module path.
#[test]
fn security_md_cites_only_real_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = read("SECURITY.md");
    let mut cited = 0;
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((module, name)) = quoted.rsplit_once("::") else {
            continue;
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || name.is_empty()
        {
            continue;
        }
        let parts: Vec<&str> = module.split("::").filter(|p| *p != "tests").collect();
        // `upload::x` lives in tests/api/upload.rs; `auth::jwt::tests::x` in src/auth/jwt.rs.
        let candidates = [
            root.join("tests/api")
                .join(format!("{}.rs", parts.join("/"))),
            root.join("src").join(format!("{}.rs", parts.join("/"))),
            root.join("src").join(parts.join("/")).join("mod.rs"),
            // Unit tests in a file of their own: `src/ingest/scan/tests.rs`, `.../tests/mod.rs`.
            root.join("src").join(parts.join("/")).join("tests.rs"),
            root.join("src").join(parts.join("/")).join("tests/mod.rs"),
        ];
        let found = candidates
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .any(|src| {
                src.contains(&format!("fn {name}(")) || src.contains(&format!("fn {name}<"))
            });
        assert!(found, "SECURITY.md cites {quoted}, which does not exist");
        cited += 1;
    }
    assert!(cited >= 40, "only {cited} tests cited");
}

/// `contrib/coffer.service` keeps the hardening the README promises, and its exposure as
/// `systemd-analyze security --offline=yes` rates it is at most 2.0 and is what the README
/// states. Without systemd-analyze the rating is skipped (with a note), unless
/// `COFFER_TEST_REQUIRE_STACK=1` (CI), where that is a failure.
#[test]
fn the_systemd_unit_is_hardened_and_rated_as_the_readme_says() {
    let unit = read("contrib/coffer.service");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=coffer",
        "LoadCredential=secret-key:",
        "Environment=COFFER_SECRET_KEY_FILE=%d/secret-key",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(
            unit.contains(directive),
            "contrib/coffer.service lacks {directive:?}"
        );
    }
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/coffer.service");
    let out = match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit_path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_STACK").as_deref() != Ok("1"),
                "systemd-analyze is needed to rate contrib/coffer.service: {e}"
            );
            eprintln!("skipped: rating contrib/coffer.service needs systemd-analyze ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{text}");
    let rating = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for coffer.service: ")
                .nth(1)
        })
        .expect("an overall rating");
    let score: String = rating
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        read("README.md").contains(&format!("exposure {score}")),
        "README.md must state the unit's rating: exposure {score}"
    );
}
