//! Requests written as intent: `app.get(path).as_user(&u).expect(200)`,
//! `app.delete_file(id).as_user(&thief).problem(404)`. A [`Req`] is a `reqwest` request to
//! the server under test whose `send` cannot fail (a transport error fails the test), with the
//! checks tests make on the answer; [`Refusal`] is what a table of bad inputs compares.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, RequestBuilder, Response};
use serde::Serialize;
use serde_json::Value;

use super::{TestApp, TestUser, content_type, problem};

/// A request to the server under test, not sent yet.
#[must_use = "a request does nothing until it is sent"]
pub struct Req(RequestBuilder);

impl TestApp {
    /// A request with no credentials (add them with [`Req::as_user`], [`Req::bearer`] or
    /// [`Req::api_key`]).
    pub fn request(&self, method: Method, path: &str) -> Req {
        Req(self.req(method, path))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Req {
        self.request(Method::GET, path)
    }

    /// A counter or gauge from this process's `/metrics` (a single-node test's).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").send().await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .parse()
            .unwrap()
    }

    /// `HEAD path`.
    pub fn head(&self, path: &str) -> Req {
        self.request(Method::HEAD, path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> Req {
        self.request(Method::POST, path)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Req {
        self.request(Method::DELETE, path)
    }
}

impl Req {
    /// As this user (its access token).
    #[expect(
        clippy::wrong_self_convention,
        reason = "reads as the spec says it: app.me().as_user(&u)"
    )]
    pub fn as_user(self, user: &TestUser) -> Self {
        self.bearer(&user.token)
    }

    /// With this bearer token.
    pub fn bearer(self, token: &str) -> Self {
        Self(self.0.bearer_auth(token))
    }

    /// With this API key (`X-Api-Key`).
    pub fn api_key(self, key: &str) -> Self {
        self.header("x-api-key", key)
    }

    /// With a header.
    pub fn header(self, name: &str, value: &str) -> Self {
        Self(self.0.header(name, value))
    }

    /// With headers given as pairs.
    pub fn headers(self, pairs: &[(&str, &str)]) -> Self {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Self(self.0.headers(h))
    }

    /// With query parameters.
    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        Self(self.0.query(query))
    }

    /// With a JSON body.
    pub fn json<T: Serialize + ?Sized>(self, body: &T) -> Self {
        Self(self.0.json(body))
    }

    /// With a raw body.
    pub fn body(self, body: impl Into<Body>) -> Self {
        Self(self.0.body(body))
    }

    /// With a multipart body.
    pub fn multipart(self, form: Form) -> Self {
        Self(self.0.multipart(form))
    }

    /// Send it; a transport error fails the test.
    pub async fn send(self) -> Response {
        self.0.send().await.unwrap()
    }

    /// Send it and return the status alone.
    pub async fn status(self) -> u16 {
        self.send().await.status().as_u16()
    }

    /// Send it, assert the status, and return the body as JSON (`Null` when empty).
    pub async fn expect(self, status: u16) -> Value {
        let r = self.send().await;
        let (got, url) = (r.status().as_u16(), r.url().path().to_owned());
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{url}: {text}");
        if text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
    }

    /// Send it and assert a problem document with this status; returns its body.
    pub async fn problem(self, status: u16) -> Value {
        problem(self.send().await, status).await
    }

    /// Send it and reduce the answer to what a table of bad inputs compares.
    pub async fn refusal(self) -> Refusal {
        Refusal::of(self.send().await).await
    }
}

/// A multipart form with one `file` part named `name`.
pub fn file_form(name: &str, bytes: Vec<u8>) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name(name.to_owned()))
}

/// Assert a problem document with this status and type (`urn:coffer:problem:<kind>`);
/// returns its body.
pub async fn assert_problem(r: Response, status: u16, kind: &str) -> Value {
    let v = problem(r, status).await;
    assert_eq!(v["type"], format!("urn:coffer:problem:{kind}"), "{v}");
    v
}

/// An answer as a table of bad inputs sees it: the status, the problem type without its
/// `urn:coffer:problem:` prefix, and the fields the problem names (`errors[].field`, each
/// once, in order, joined with commas; a field may break several rules). An answer that is not a well-formed problem document says so in `kind`, so
/// the row's comparison fails with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The problem type's last part, e.g. `validation-failed`.
    pub kind: String,
    /// The invalid fields, e.g. `email,password`; empty when none are named.
    pub fields: String,
}

impl Refusal {
    /// Read an answer.
    pub async fn of(r: Response) -> Self {
        let status = r.status().as_u16();
        let content_type = content_type(&r);
        let text = r.text().await.unwrap();
        let problem = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(|_| content_type.starts_with("application/problem+json"));
        let Some(v) = problem else {
            return Self {
                status,
                kind: format!("(not a problem document: {content_type:?} {text:?})"),
                fields: String::new(),
            };
        };
        let kind = match v["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:coffer:problem:"))
        {
            Some(k)
                if v["status"] == status && v["title"].is_string() && v["detail"].is_string() =>
            {
                k.to_owned()
            }
            _ => format!("(malformed problem: {v})"),
        };
        let fields = v["errors"]
            .as_array()
            .map(|errors| {
                let mut names: Vec<&str> = Vec::new();
                for name in errors.iter().filter_map(|e| e["field"].as_str()) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                names.join(",")
            })
            .unwrap_or_default();
        Self {
            status,
            kind,
            fields,
        }
    }
}

/// A row's expectation: `(status, kind, fields)`.
impl PartialEq<(u16, &str, &str)> for Refusal {
    fn eq(&self, (status, kind, fields): &(u16, &str, &str)) -> bool {
        self.status == *status && self.kind == *kind && self.fields == *fields
    }
}
