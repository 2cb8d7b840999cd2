//! Whole rows in and out of PostgreSQL, for `coffer migrate` ([`crate::meta::transfer`]).
//!
//! Every value is read and bound as text, `BIGINT` or `BYTEA` (a UUID as its text, cast in
//! the statement), so one [`Cell`] type serves every column of every table.

use std::error::Error;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{IsolationLevel, PgResult, Postgres};
use crate::meta::error::MetaError;
use crate::meta::transfer::{Cell, Imported, Kind, Row, Table, Transfer};

impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match (self, ty) {
            (Cell::Null, _) => Ok(IsNull::Yes),
            (Cell::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Cell::Text(s), &Type::TEXT) => s.to_sql(ty, out),
            (Cell::Bytes(b), &Type::BYTEA) => b.to_sql(ty, out),
            (cell, ty) => Err(format!("a {cell:?} cannot be bound as {ty}").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::TEXT | Type::BYTEA)
    }

    to_sql_checked!();
}

/// The column (or its exported expression) as selected: a UUID as text, any integer as
/// `BIGINT`.
fn select(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Uuid => format!("({name})::text"),
        Kind::Int => format!("({name})::bigint"),
        Kind::Text | Kind::Bytes => name.to_owned(),
    }
}

/// Parameter `$i` cast to the column's type.
fn param(i: usize, kind: Kind) -> String {
    match kind {
        Kind::Uuid => format!("${i}::text::uuid"),
        Kind::Text => format!("${i}::text"),
        Kind::Int => format!("${i}::bigint"),
        Kind::Bytes => format!("${i}::bytea"),
    }
}

fn cell(row: &tokio_postgres::Row, i: usize, kind: Kind) -> PgResult<Cell> {
    Ok(match kind {
        Kind::Uuid | Kind::Text => row.try_get::<_, Option<String>>(i)?.map(Cell::Text),
        Kind::Int => row.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
        Kind::Bytes => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
    }
    .unwrap_or(Cell::Null))
}

fn key_kind(t: &Table) -> Kind {
    t.columns.first().map_or(Kind::Text, |c| c.1)
}

/// The statements for one table.
struct Sql {
    export_first: String,
    export_after: String,
    upsert: String,
    exists: String,
    delete: String,
}

impl Sql {
    fn of(t: &Table) -> Self {
        let (name, key) = (t.name, t.key());
        let cols = t
            .columns
            .iter()
            .map(|(c, k)| select(t.exported(c), *k))
            .collect::<Vec<_>>()
            .join(", ");
        let names = t.columns.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
        let values = t
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, k))| param(i + 1, *k))
            .collect::<Vec<_>>()
            .join(", ");
        let set = t
            .columns
            .get(1..)
            .unwrap_or_default()
            .iter()
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let key_param = param(1, key_kind(t));
        Self {
            export_first: format!("SELECT {cols} FROM {name} ORDER BY {key} LIMIT $1::bigint"),
            export_after: format!(
                "SELECT {cols} FROM {name} WHERE {key} > {key_param} ORDER BY {key} LIMIT $2::bigint"
            ),
            upsert: format!(
                "INSERT INTO {name} ({names}) VALUES ({values})
                 ON CONFLICT ({key}) DO UPDATE SET {set}"
            ),
            exists: format!("SELECT 1 FROM {name} WHERE {key} = {key_param}"),
            delete: format!("DELETE FROM {name} WHERE {key} = {key_param}"),
        }
    }
}

fn params(row: &[Cell]) -> Vec<&(dyn ToSql + Sync)> {
    row.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
}

async fn export(
    c: &impl GenericClient,
    t: &Table,
    after: Option<&Cell>,
    limit: i64,
) -> PgResult<Vec<Row>> {
    let sql = Sql::of(t);
    let rows = match after {
        Some(a) => {
            let st = c.prepare_cached(&sql.export_after).await?;
            c.query(&st, &[a, &limit]).await?
        }
        None => {
            let st = c.prepare_cached(&sql.export_first).await?;
            c.query(&st, &[&limit]).await?
        }
    };
    rows.iter()
        .map(|r| {
            t.columns
                .iter()
                .enumerate()
                .map(|(i, col)| cell(r, i, col.1))
                .collect()
        })
        .collect()
}

async fn upsert_all(c: &impl GenericClient, t: &Table, rows: &[Row]) -> PgResult<usize> {
    let st = c.prepare_cached(&Sql::of(t).upsert).await?;
    for row in rows {
        c.execute(&st, &params(row)).await?;
    }
    Ok(rows.len())
}

/// One row in its own transaction; `false` when its parent is missing.
async fn upsert_one(c: &impl GenericClient, t: &Table, row: &[Cell]) -> PgResult<bool> {
    let st = c.prepare_cached(&Sql::of(t).upsert).await?;
    match c.execute(&st, &params(row)).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn present(c: &impl GenericClient, t: &Table, keys: &[Cell]) -> PgResult<Vec<Cell>> {
    let st = c.prepare_cached(&Sql::of(t).exists).await?;
    let mut out = Vec::new();
    for k in keys {
        if c.query_opt(&st, &[k]).await?.is_some() {
            out.push(k.clone());
        }
    }
    Ok(out)
}

async fn remove(c: &impl GenericClient, t: &Table, keys: &[Cell]) -> PgResult<()> {
    let st = c.prepare_cached(&Sql::of(t).delete).await?;
    for k in keys {
        c.execute(&st, &[k]).await?;
    }
    Ok(())
}

fn is_foreign_key(e: &MetaError) -> bool {
    matches!(e, MetaError::Postgres(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION))
}

#[async_trait]
impl Transfer for Postgres {
    async fn export_rows(
        &self,
        table: &'static Table,
        after: Option<Cell>,
        limit: usize,
    ) -> Result<Vec<Row>, MetaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.one(after, move |c, after| {
            Box::pin(export(c, table, after.as_ref(), limit))
        })
        .await
    }

    async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<Row>,
    ) -> Result<Imported, MetaError> {
        let all = self
            .tx(IsolationLevel::ReadCommitted, &rows, move |tx, rows| {
                Box::pin(upsert_all(tx, table, rows))
            })
            .await;
        match all {
            Ok(written) => Ok(Imported {
                written,
                dangling: 0,
            }),
            // A child whose parent is not there (yet) aborts the batch: go row by row, leaving
            // out only such rows.
            Err(e) if is_foreign_key(&e) => {
                let mut done = Imported::default();
                for row in &rows {
                    let ok = self
                        .one(row, move |c, row| Box::pin(upsert_one(c, table, row)))
                        .await?;
                    if ok {
                        done.written += 1;
                    } else {
                        done.dangling += 1;
                    }
                }
                Ok(done)
            }
            Err(e) => Err(e),
        }
    }

    async fn present_keys(
        &self,
        table: &'static Table,
        keys: Vec<Cell>,
    ) -> Result<Vec<Cell>, MetaError> {
        self.one(keys, move |c, keys| Box::pin(present(c, table, keys)))
            .await
    }

    async fn remove_rows(&self, table: &'static Table, keys: Vec<Cell>) -> Result<(), MetaError> {
        self.tx(IsolationLevel::ReadCommitted, keys, move |tx, keys| {
            Box::pin(remove(tx, table, keys))
        })
        .await
    }

    async fn recount_usage(&self) -> Result<(), MetaError> {
        self.one((), |c, ()| {
            Box::pin(async move {
                c.execute(
                    "UPDATE users SET used_bytes =
                        (SELECT COALESCE(SUM(size), 0) FROM files WHERE owner_id = users.id)",
                    &[],
                )
                .await?;
                // Deliveries arrive with their `seq`: the identity must continue after them,
                // or a new event could sort before a copied one of the same file.
                c.execute(
                    "SELECT setval(pg_get_serial_sequence('webhook_deliveries', 'seq'),
                                   GREATEST(COALESCE(MAX(seq), 0), 1)) FROM webhook_deliveries",
                    &[],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }
}
