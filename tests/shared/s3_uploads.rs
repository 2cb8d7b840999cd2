//! ListMultipartUploads through curl's SigV4 (object_store does not offer it), shared by the
//! black-box and the blob-store tests (each includes this file with `#[path]`).

use std::process::Command;

/// Where to look: the store's endpoint, bucket, signing region and credentials.
pub struct Bucket<'a> {
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
}

/// Keys of the unfinished multipart uploads under `prefix`; `None` without curl.
pub fn multipart_uploads(b: &Bucket<'_>, prefix: &str) -> Option<Vec<String>> {
    let url = format!(
        "{}/{}?prefix={}&uploads=",
        b.endpoint.trim_end_matches('/'),
        b.bucket,
        prefix.replace('/', "%2F")
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:s3", b.region))
        .arg("--user")
        .arg(format!("{}:{}", b.access_key_id, b.secret_access_key))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(url)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "ListMultipartUploads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8(out.stdout).unwrap();
    Some(
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect(),
    )
}
