//! One call per route of the contract, so a test names what it does instead of spelling out
//! the request: `app.me().as_user(&u).status()`, `app.delete_file(id).as_user(&u).problem(404)`.
//! Each returns an unsent [`Req`] without credentials; the `new_*` calls send with a token,
//! expect 201 and return the created object. Also: the audit trail, blobs on disk, the CLI.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::TestApp;
use super::request::Req;

/// The body of a registration.
pub fn account(username: &str, email: &str, password: &str) -> Value {
    json!({"username": username, "email": email, "password": password})
}

impl TestApp {
    /// `POST /api/v1/auth/register` with this body.
    pub fn register(&self, body: &Value) -> Req {
        self.post("/api/v1/auth/register").json(body)
    }

    /// `POST /api/v1/auth/login` (for a login expected to fail; [`TestApp::login`] expects
    /// success).
    pub fn try_login(&self, username: &str, password: &str) -> Req {
        self.post("/api/v1/auth/login")
            .json(&json!({"username": username, "password": password}))
    }

    /// `POST /api/v1/auth/refresh` with this refresh token.
    pub fn refresh(&self, refresh_token: &str) -> Req {
        self.post("/api/v1/auth/refresh")
            .json(&json!({"refresh_token": refresh_token}))
    }

    /// `POST /api/v1/auth/logout`.
    pub fn logout(&self) -> Req {
        self.post("/api/v1/auth/logout")
    }

    /// `GET /api/v1/users/me`.
    pub fn me(&self) -> Req {
        self.get("/api/v1/users/me")
    }

    /// `POST /api/v1/api-keys` with this body.
    pub fn create_api_key(&self, body: &Value) -> Req {
        self.post("/api/v1/api-keys").json(body)
    }

    /// `DELETE /api/v1/api-keys/{id}`.
    pub fn delete_api_key(&self, id: &str) -> Req {
        self.delete(&format!("/api/v1/api-keys/{id}"))
    }

    /// A new API key named `name` for the bearer of `token`: the 201 body (`id`, `key`, …).
    pub async fn new_api_key(&self, token: &str, name: &str) -> Value {
        self.create_api_key(&json!({ "name": name }))
            .bearer(token)
            .expect(201)
            .await
    }

    /// `GET /api/v1/files` (one page).
    pub fn files(&self) -> Req {
        self.get("/api/v1/files")
    }

    /// `GET /api/v1/files/{id}` (the file object).
    pub fn file(&self, id: &str) -> Req {
        self.get(&format!("/api/v1/files/{id}"))
    }

    /// `GET /api/v1/files/{id}/content`.
    pub fn content(&self, id: &str) -> Req {
        self.get(&format!("/api/v1/files/{id}/content"))
    }

    /// A whole file's content as its owner (the bearer of `token`) downloads it (200 expected).
    pub async fn content_of(&self, token: &str, id: &str) -> Vec<u8> {
        let r = self.content(id).bearer(token).send().await;
        assert_eq!(r.status(), 200, "download {id}");
        r.bytes().await.unwrap().to_vec()
    }

    /// `DELETE /api/v1/files/{id}`.
    pub fn delete_file(&self, id: &str) -> Req {
        self.delete(&format!("/api/v1/files/{id}"))
    }

    /// `POST /api/v1/files/{id}/links` with this body.
    pub fn create_link(&self, file_id: &str, body: &Value) -> Req {
        self.post(&format!("/api/v1/files/{file_id}/links"))
            .json(body)
    }

    /// A new share link to a file of the bearer of `token`: the 201 body (`id`, `url`, …).
    pub async fn new_link(&self, token: &str, file_id: &str, body: &Value) -> Value {
        self.create_link(file_id, body)
            .bearer(token)
            .expect(201)
            .await
    }

    /// `DELETE /api/v1/links/{id}`.
    pub fn delete_link(&self, id: &str) -> Req {
        self.delete(&format!("/api/v1/links/{id}"))
    }

    /// `DELETE /api/v1/admin/users/{id}`.
    pub fn delete_user(&self, id: &str) -> Req {
        self.delete(&format!("/api/v1/admin/users/{id}"))
    }

    /// `POST /api/v1/admin/users/{id}/role`.
    pub fn set_role(&self, id: &str, role: &str) -> Req {
        self.post(&format!("/api/v1/admin/users/{id}/role"))
            .json(&json!({ "role": role }))
    }

    /// The audit trail's event names, newest first.
    pub async fn audit_events(&self, admin_token: &str) -> Vec<String> {
        self.audit(admin_token)
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Wait (bounded) for an audit entry that `matches`; return it. Some entries are written
    /// just after the answer that caused them.
    pub async fn audited(
        &self,
        admin_token: &str,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit(admin_token).await.into_iter().find(&matches) {
                return e;
            }
            assert!(Instant::now() < deadline, "no audit entry: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The blob file of a file id (panics if there is none).
    pub fn blob_of(&self, file_id: &str) -> PathBuf {
        self.blob_files()
            .into_iter()
            .find(|p| p.to_string_lossy().contains(file_id))
            .unwrap_or_else(|| panic!("no blob for {file_id}"))
    }

    /// Put a blob no row points at where a file's blob would be; returns its id.
    pub fn plant_orphan_blob(&self, bytes: &[u8]) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(prefix) = self.bucket_prefix() {
            let key = format!("{prefix}blobs/{}/{}/{id}", &id[..2], &id[2..4]);
            self.write_blob(std::path::Path::new(&key), bytes);
            return id;
        }
        let shard = self.root.join("blobs").join(&id[..2]).join(&id[2..4]);
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join(&id), bytes).unwrap();
        id
    }

    /// Run a CLI command on this server's root: its exit code and everything it printed.
    pub fn run_cli(&self, args: &[&str]) -> (i32, String) {
        outcome(&mut self.cli(args))
    }
}

/// The `key` of each item of a listing, in order, after checking that none comes twice.
pub fn each_once(items: &[Value], key: &str) -> Vec<String> {
    let values: Vec<String> = items
        .iter()
        .map(|item| item[key].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = values.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), values.len(), "a {key} came twice: {values:?}");
    values
}

/// Run a command: its exit code (-1 if killed) and everything it printed, stdout first.
pub fn outcome(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
