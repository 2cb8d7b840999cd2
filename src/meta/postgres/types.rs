//! How the crate's ids, timestamps and roles travel to and from PostgreSQL.
//!
//! Invariant: ids are `UUID` columns, timestamps `BIGINT` microseconds since the epoch (as in
//! SQLite: the keyset cursors compare them), roles `TEXT` in their stored spelling. A value the
//! column cannot hold is an error, never a silent default.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};
use uuid::Uuid;

use crate::ids::{
    ApiKeyId, FileId, GrantId, LinkId, SessionId, Timestamp, UploadId, UserId, WebhookId,
};
use crate::meta::users::Role;

type BoxError = Box<dyn Error + Sync + Send>;

macro_rules! uuid_column {
    ($($name:ident),+) => {$(
        impl ToSql for $name {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
                self.0.to_sql(ty, out)
            }
            accepts!(UUID);
            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
                Uuid::from_sql(ty, raw).map(Self)
            }
            accepts!(UUID);
        }
    )+};
}

uuid_column!(
    UserId, FileId, LinkId, ApiKeyId, SessionId, UploadId, GrantId, WebhookId
);

impl ToSql for Timestamp {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.0.to_sql(ty, out)
    }
    accepts!(INT8);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        i64::from_sql(ty, raw).map(Self)
    }
    accepts!(INT8);
}

impl ToSql for Role {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.as_str().to_sql(ty, out)
    }
    accepts!(TEXT, VARCHAR);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Role {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let s = <&str>::from_sql(ty, raw)?;
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}").into())
    }
    accepts!(TEXT, VARCHAR);
}
