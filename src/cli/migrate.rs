//! `coffer migrate --to CONFIG`: open both ends, refuse a target that is the source or holds
//! another store, then hand over to `ops::migrate`, printing its progress and summary.
//!
//! The target is CONFIG plus the `COFFER_TO_*` variables, each acting as its `COFFER_*`
//! twin for the target only (`COFFER_TO_DATABASE_URL` carries the target database's
//! password, which a config file never does). A first run needs an empty target; the source
//! root keeps the name of the target it fills (`migrate-target`), so later runs may
//! continue into it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Failure, keyring, open_stores};
use crate::config::{Config, StorageBackend};
use crate::meta::MetaStore;
use crate::ops::migrate::{self, Stores, human_bytes};
use crate::secrets::S3Credentials;

/// Prefix of the variables that configure the target.
const TARGET_PREFIX: &str = "COFFER_TO_";
/// The file in the source root naming the target an earlier run filled.
const MARKER: &str = "migrate-target";

pub(super) async fn run(config: Config, to: &Path) -> Result<ExitCode, Failure> {
    let target_env = target_env();
    let to_config = Config::load_from(Some(to), target_env.clone())
        .map_err(|e| Failure::Config(format!("target configuration {}: {e}", to.display())))?;
    let to_s3 = match to_config.storage.backend {
        StorageBackend::Fs => None,
        StorageBackend::S3 => Some(target_s3(&target_env)?),
    };
    let keys = keyring()?;
    let (from_root, from_meta, from_blobs) = open_stores(&config).await?;
    let (to_root, to_blobs) = crate::state::open_storage(&to_config, to_s3.as_ref())?;
    let (from_name, to_name) = (
        describe(&config, &from_root),
        describe(&to_config, &to_root),
    );
    if from_name == to_name {
        return Err(Failure::Config(format!(
            "the target {to_name} is the source store; name other backends in {}",
            to.display()
        )));
    }
    let to_meta = match to_config.database.postgres() {
        Some(pg) => MetaStore::open_postgres(&pg).await?,
        None => MetaStore::open_sqlite(&to_root.join("coffer.db"), 2).await?,
    };
    let marker = from_root.join(MARKER);
    let resumed = read_marker(&marker).as_deref() == Some(to_name.as_str());
    if !resumed && !migrate::is_empty(&to_meta).await? {
        return Err(Failure::Config(format!(
            "the target {to_name} already holds accounts or files that no earlier migrate \
             from this store wrote; migrate into an empty store"
        )));
    }
    write_marker(&marker, &to_name)?;
    println!(
        "migrate: {from_name} -> {to_name}{}",
        if resumed { " (continuing)" } else { "" }
    );
    let from = Stores {
        meta: from_meta,
        blobs: from_blobs,
    };
    let to = Stores {
        meta: to_meta,
        blobs: to_blobs,
    };
    let mut progress = |line: String| println!("migrate: {line}");
    let s = migrate::run(&from, &to, &keys, &mut progress).await?;
    for p in &s.problems {
        println!("{p}");
    }
    println!(
        "migrate: done: {} rows, {} blobs copied ({}), {} already there, {} rows removed, \
         {} files deleted meanwhile, {} rows changed meanwhile, {} problems",
        s.rows.iter().map(|r| r.1).sum::<usize>(),
        s.blobs_copied,
        human_bytes(s.bytes_copied),
        s.blobs_present,
        s.removed,
        s.vanished,
        s.dangling,
        s.problems.len()
    );
    if s.vanished > 0 || s.dangling > 0 {
        println!(
            "migrate: the source changed while this ran; stop it and run migrate again to copy \
             the rest"
        );
    }
    println!(
        "migrate: serve the target with the same COFFER_SECRET_KEY and encryption keys as the \
         source"
    );
    Ok(if s.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The target's environment: every `COFFER_TO_X` as `COFFER_X`.
fn target_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(TARGET_PREFIX)?;
            Some((format!("COFFER_{rest}"), v))
        })
        .collect()
}

/// The target's S3 credentials: from `COFFER_TO_S3_*` when any is set, else `COFFER_S3_*`.
fn target_s3(target_env: &[(String, String)]) -> Result<S3Credentials, Failure> {
    let own = target_env.iter().any(|(k, _)| k.starts_with("COFFER_S3_"));
    let creds = if own {
        S3Credentials::from_lookup(|name| {
            target_env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into())
        })
    } else {
        S3Credentials::from_env()
    };
    creds.map_err(|e| Failure::Config(format!("target: {e}")))
}

/// Where a configuration's store is, without credentials.
fn describe(config: &Config, root: &Path) -> String {
    let meta = match config.database.postgres() {
        Some(pg) => format!("postgres {}", pg.location()),
        None => format!("sqlite {}", root.join("coffer.db").display()),
    };
    let blobs = match config.storage.backend {
        StorageBackend::Fs => format!("fs {}", root.display()),
        StorageBackend::S3 => {
            let s3 = &config.s3;
            format!("s3 {}/{}/{}", s3.endpoint, s3.bucket, s3.prefix)
        }
    };
    format!("[{meta}, {blobs}]")
}

fn read_marker(path: &PathBuf) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn write_marker(path: &Path, target: &str) -> Result<(), Failure> {
    std::fs::write(path, format!("{target}\n"))
        .map_err(|e| Failure::Other(anyhow::anyhow!("{}: {e}", path.display())))
}
