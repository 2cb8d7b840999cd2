//! Identifier newtypes and the timestamp type shared by every layer.
//!
//! Invariant: an id value was parsed from a canonical UUID or freshly generated, so it can be
//! put into a path or a query without further checks; it never carries client-chosen text.

use std::fmt;

use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parse a hyphenated UUID (either case, RFC 9562); anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                // Only the 36-character hyphenated form: no braces, URNs or simple form. The
                // id is always written back lower-case, so it has one spelling in logs,
                // paths and SQL.
                if s.len() != 36 {
                    return None;
                }
                Uuid::try_parse(s).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.0.hyphenated().to_string()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                Self::parse(s).ok_or(rusqlite::types::FromSqlError::InvalidType)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A stored file.
    FileId
);
uuid_id!(
    /// A share link (not its token).
    LinkId
);
uuid_id!(
    /// An API key (not its secret).
    ApiKeyId
);
uuid_id!(
    /// A login: one refresh-token family and its access tokens.
    SessionId
);
uuid_id!(
    /// An upload in flight (its quota reservation).
    UploadId
);
uuid_id!(
    /// An upload grant (not its token).
    GrantId
);
uuid_id!(
    /// A webhook (API.md "Events and webhooks").
    WebhookId
);

/// A point in time, microseconds since the Unix epoch (UTC). Serialised as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self(i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
    }

    /// This time plus `secs` seconds (saturating).
    pub fn plus_secs(self, secs: u64) -> Self {
        let us = i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Self(self.0.saturating_add(us))
    }

    /// This time minus `secs` seconds (saturating).
    pub fn minus_secs(self, secs: u64) -> Self {
        let us = i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Self(self.0.saturating_sub(us))
    }

    /// Whole seconds since the epoch.
    pub fn unix_secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// From whole seconds since the epoch.
    pub fn from_unix_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1_000_000))
    }

    /// The `OffsetDateTime`, or the epoch when out of range.
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339, UTC.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime().format(&Rfc3339).unwrap_or_default()
    }

    /// The HTTP-date form (`Last-Modified`), RFC 9110 section 5.6.7.
    pub fn to_http_date(self) -> String {
        // HTTP dates end at 9999-12-31T23:59:59 (httpdate panics beyond).
        let secs = u64::try_from(self.unix_secs())
            .unwrap_or(0)
            .min(253_402_300_799);
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl rusqlite::ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.0))
    }
}

impl rusqlite::types::FromSql for Timestamp {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_i64().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_only_the_canonical_form() {
        let id = FileId::new();
        assert_eq!(FileId::parse(&id.to_string()), Some(id));
        assert_eq!(FileId::parse(&id.0.simple().to_string()), None);
        assert_eq!(FileId::parse("../../etc/passwd"), None);
        assert_eq!(FileId::parse(&format!("{{{id}}}")), None);
    }

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        let t = Timestamp::from_unix_secs(0);
        assert_eq!(t.to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(t.to_http_date(), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(t.plus_secs(90).unix_secs(), 90);
        assert_eq!(
            Timestamp(i64::MAX).to_http_date(),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }
}
